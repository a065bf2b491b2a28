"""needle.save / needle.load (see docs/ARCHITECTURE.md, "Serialization")."""


def save(obj, path, metadata=None):
    raise NotImplementedError("needle.save is not available yet")


def load(path, device=None):
    raise NotImplementedError("needle.load is not available yet")
