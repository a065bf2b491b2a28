"""Diagrams of the course notebooks, drawn with matplotlib (no data, no model needed).

Each function draws one titled figure and returns it (``fig``); the notebooks call them and
``plt.show()``. Pure diagrams have their axes off; every element is labelled in the picture.

* :func:`course_map`         the notebooks as the stages of post-training quantization
* :func:`affine_grid`        the affine map x -> clamp(round(x / s) + z): its grid of codes
* :func:`safetensors_layout` the byte layout of a safetensors file, from its parsed header
* :func:`integer_gemm`       the int8 GEMM with its zero-point and bias terms
* :func:`byte_lanes`         8-bit products summed into 32-bit lanes (VNNI vpdpbusd, dp4a)
* :func:`cuda_tiles`         the CUDA kernel's block tile and one thread's register block
"""
import numpy as np

__all__ = ["course_map", "affine_grid", "safetensors_layout", "integer_gemm", "byte_lanes",
           "cuda_tiles"]

_COLORS = {"float": "#cfe2f3", "quant": "#fce5cd", "kernel": "#d9ead3", "model": "#ead1dc",
           "int8": "#fce5cd", "int32": "#d9ead3", "uint8": "#cfe2f3", "meta": "#eeeeee"}


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _box(ax, x, y, w, h, text, color, fontsize=10, **kw):
    from matplotlib.patches import FancyBboxPatch
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.05",
                                facecolor=color, edgecolor="black", linewidth=1, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, wrap=True)


def _arrow(ax, x0, y0, x1, y1, text=None, **kw):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="->", lw=1.3, color=kw.pop("color", "black")))
    if text:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.08, text, ha="center", va="bottom", fontsize=9)


def _rect(ax, x, y, w, h, color, text=None, fontsize=10, **kw):
    from matplotlib.patches import Rectangle
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor=kw.pop("edgecolor", "black"),
                           linewidth=kw.pop("linewidth", 1), **kw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def course_map():
    """The course's notebooks as the pipeline that turns a float model into an int8 one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.6))
    stages = [
        ("0 setup\nintegers", "float"), ("1 save / load\nsafetensors", "float"),
        ("2 fold\nBatchNorm", "float"), ("3 scales and\nzero points", "quant"),
        ("4 calibrate\nranges", "quant"), ("5 int8 GEMM\nCPU", "kernel"),
        ("6 int8 GEMM\nGPU", "kernel"), ("7 the int8\nmodel", "model"),
        ("8 QAT: train\nwith rounding", "model")]
    w, h, gap = 1.0, 0.8, 0.22
    for i, (text, kind) in enumerate(stages):
        x = i * (w + gap)
        _box(ax, x, 1.0, w, h, text, _COLORS[kind], fontsize=9)
        if i:
            _arrow(ax, x - gap, 1.4, x, 1.4)
    groups = [("float model: store it, simplify it", 0, 2, "float"),
              ("the numbers: map floats to codes", 3, 4, "quant"),
              ("the integer kernels", 5, 6, "kernel"), ("the whole model", 7, 8, "model")]
    for text, i0, i1, kind in groups:
        x0, x1 = i0 * (w + gap), i1 * (w + gap) + w
        ax.plot([x0, x1], [0.8, 0.8], color="black", lw=1)
        ax.text((x0 + x1) / 2, 0.62, text, ha="center", va="top", fontsize=9,
                bbox=dict(facecolor=_COLORS[kind], edgecolor="none", pad=2))
    ax.text(-0.1, 2.15, "float32 model (MNIST CNN)", fontsize=10, ha="left")
    ax.text(9 * (w + gap) - gap, 2.15, "int8 model: 1/4 of the bytes, integer-only kernels",
            fontsize=10, ha="right")
    ax.set_xlim(-0.2, 9 * (w + gap)); ax.set_ylim(0.2, 2.4); ax.axis("off")
    ax.set_title("The course: from a float32 network to an int8 one, notebook by notebook")
    fig.tight_layout()
    return fig


def affine_grid(scale=0.25, zero_point=4, qmin=0, qmax=15, lo=-1.6, hi=3.4):
    """The affine map q = clamp(round(x / scale) + zero_point, qmin, qmax) drawn as a grid.

    The real axis (top) with the representable values s (q - z), the code axis (bottom), and
    a few reals mapped to their codes: inside the range they round to the nearest grid point,
    outside it they clamp. Defaults: a 4-bit uint grid, so every level is visible.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    q = np.arange(qmin, qmax + 1)
    grid = scale * (q - zero_point)
    ax.plot([lo, hi], [1, 1], color="black", lw=1)
    ax.plot([lo, hi], [0, 0], color="black", lw=1)
    ax.axvspan(lo, grid[0] - scale / 2, color="#f4cccc", alpha=0.6, lw=0)
    ax.axvspan(grid[-1] + scale / 2, hi, color="#f4cccc", alpha=0.6, lw=0)
    for g, c in zip(grid, q):
        ax.plot([g, g], [0.95, 1.05], color="black", lw=1)
        ax.plot([g, g], [-0.05, 0.05], color="black", lw=1)
        ax.text(g, -0.13, str(c), ha="center", va="top", fontsize=9)
    ax.plot([0], [1], "o", color="tab:green")
    ax.annotate(f"x = 0 is exactly code z = {zero_point}", (0, 1), xytext=(0.1, 1.35),
                fontsize=9, color="tab:green", arrowprops=dict(arrowstyle="->", color="tab:green"))
    for x in (-1.45, -0.62, 0.93, 2.2, 3.25):
        code = int(np.clip(np.rint(x / scale) + zero_point, qmin, qmax))
        ax.plot([x], [1], "v", color="tab:blue")
        ax.annotate("", xy=(scale * (code - zero_point), 0.05), xytext=(x, 0.95),
                    arrowprops=dict(arrowstyle="->", color="tab:blue", lw=1))
        ax.text(x, 1.1, f"{x:g}", ha="center", fontsize=9, color="tab:blue")
    ax.text(lo, 1.55, "real values x (the grid points are s (q - z))", fontsize=10)
    ax.text(lo, -0.45, f"codes q, {qmin}..{qmax}", fontsize=10)
    ax.text((lo + grid[0]) / 2, 0.5, "clamped\nto qmin", ha="center", fontsize=9, color="darkred")
    ax.text((hi + grid[-1]) / 2, 0.5, "clamped\nto qmax", ha="center", fontsize=9, color="darkred")
    ax.set_xlim(lo, hi); ax.set_ylim(-0.6, 1.75); ax.axis("off")
    ax.set_title(f"The affine map q = clamp(round(x / s) + z): s = {scale:g}, z = {zero_point}, "
                 f"{int(np.log2(qmax - qmin + 1))}-bit codes")
    fig.tight_layout()
    return fig


def safetensors_layout(header_len, header, max_tensors=4):
    """The bytes of a safetensors file: [u64 header length][JSON header][tensor data ...].

    header_len: the first 8 bytes' value; header: the parsed JSON (``__metadata__`` optional).
    Segment widths grow with the logarithm of their size (a real file spans 8 bytes to
    megabytes); the first ``max_tensors`` tensors are named, the rest summed.
    """
    plt = _plt()
    tensors = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])
    dtype_color = {"F32": _COLORS["float"], "I8": _COLORS["int8"], "U8": _COLORS["uint8"],
                   "I32": _COLORS["int32"]}
    segs = [("header\nlength\nu64 LE", 8, "#dddddd", "0"),
            (f"JSON header\n{len(tensors)} entries", header_len, _COLORS["meta"], "8")]
    base = 8 + header_len
    for name, info in tensors[:max_tensors]:
        b, e = info["data_offsets"]
        shape = "x".join(map(str, info["shape"])) or "scalar"
        head, _, leaf = name.rpartition(".")   # long names on two lines
        label = f"{head}.\n{leaf}" if head else leaf
        segs.append((f"{label}\n{info['dtype']} [{shape}]", e - b,
                     dtype_color.get(info["dtype"], "white"), str(base + b)))
    rest = tensors[max_tensors:]
    if rest:
        b = rest[0][1]["data_offsets"][0]
        e = rest[-1][1]["data_offsets"][1]
        segs.append((f"... {len(rest)} more\ntensors", e - b, "white", str(base + b)))
    widths = [1.4 + np.log10(max(n, 1)) for _, n, _, _ in segs]
    fig, ax = plt.subplots(figsize=(12, 3.2))
    x = 0.0
    for (text, nbytes, color, start), w in zip(segs, widths):
        _rect(ax, x, 0, w, 1, color, text, fontsize=8)
        ax.text(x + w / 2, -0.12, f"{nbytes:,} B", ha="center", va="top", fontsize=8)
        ax.text(x, 1.06, start, ha="left", va="bottom", fontsize=8, rotation=0)
        x += w
    total = base + (tensors[-1][1]["data_offsets"][1] if tensors else 0)
    ax.text(x, 1.06, str(total), ha="right", va="bottom", fontsize=8)
    d0 = sum(widths[:2])
    ax.annotate("", xy=(x, 1.45), xytext=(d0, 1.45), arrowprops=dict(arrowstyle="<->"))
    ax.text((d0 + x) / 2, 1.5, "data section: data_offsets count from here, no gaps",
            ha="center", fontsize=9)
    ax.text(0, 1.5, "byte offset in the file", fontsize=9)
    ax.set_xlim(-0.1, x + 0.1); ax.set_ylim(-0.45, 1.85); ax.axis("off")
    ax.set_title("Byte layout of a safetensors file (segment width ~ log of its size)")
    fig.tight_layout()
    return fig


def integer_gemm():
    """acc = A W^T - z_x colsum + bias, then requantization: shapes and dtypes of each term."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(12, 3.8))
    _rect(ax, 0, 0, 1.6, 2.0, _COLORS["uint8"], "A\nactivation codes\nuint8 [M, K]", 9)
    ax.text(1.85, 1.0, "x", fontsize=14, ha="center", va="center")
    _rect(ax, 2.1, 0.6, 1.2, 1.4, _COLORS["int8"], "W$^T$\nweight codes\nint8 [K, N]", 9)
    ax.text(3.55, 1.0, "=", fontsize=14, ha="center", va="center")
    _rect(ax, 3.8, 0, 1.2, 2.0, _COLORS["int32"], "$\\sum_k a_{ik} w_{ck}$\nint32 [M, N]", 9)
    ax.text(5.25, 1.0, "-", fontsize=16, ha="center", va="center")
    _rect(ax, 5.5, 1.7, 1.2, 0.3, _COLORS["int32"], "z$_x$ colsum [N]", 8)
    ax.text(6.1, 1.35, "once per output channel,\ncolsum$_c = \\sum_k w_{ck}$\n"
            "computed when packing", ha="center", va="top", fontsize=8)
    ax.text(6.95, 1.0, "+", fontsize=14, ha="center", va="center")
    _rect(ax, 7.2, 1.7, 1.2, 0.3, _COLORS["int32"], "bias [N] int32", 8)
    ax.text(7.8, 1.35, "scale $s_x s_w$", ha="center", va="top", fontsize=8)
    _arrow(ax, 8.6, 1.0, 9.4, 1.0)
    ax.text(9.0, 0.9, "requantize:\n$(M_0, n)$ per\nchannel, round,\n+ z$_y$, clamp",
            fontsize=8, ha="center", va="top")
    _rect(ax, 9.5, 0, 1.2, 2.0, _COLORS["uint8"], "output codes\nuint8 [M, N]", 9)
    ax.text(0.8, -0.25, "one row per output pixel\n(im2col for a convolution)", ha="center",
            va="top", fontsize=8)
    ax.text(2.7, 0.45, "one column per\noutput channel", ha="center", va="top", fontsize=8)
    ax.text(4.4, -0.25, "the inner loop: raw 8-bit codes,\n32-bit sums (VNNI / dp4a)",
            ha="center", va="top", fontsize=8)
    ax.set_xlim(-0.2, 10.9); ax.set_ylim(-0.8, 2.3); ax.axis("off")
    ax.set_title("The integer GEMM: $(x - z_x)\\,w$ summed as $x\\,w - z_x\\,$colsum, "
                 "then requantized")
    fig.tight_layout()
    return fig


def byte_lanes(lanes=4, a_signed=False, title=None, example=None):
    """``lanes`` 32-bit lanes, each summing 4 products of a uint8 (or int8) byte of ``a`` and an
    int8 byte of ``b`` into an int32 accumulator (VNNI ``vpdpbusd`` per 32-bit lane; CUDA
    ``dp4a`` is one lane). ``example``: (a [4 lanes], b [4 lanes], c) values of the first lane."""
    plt = _plt()
    n = 4 * lanes
    fig, ax = plt.subplots(figsize=(max(7.0, 0.72 * n + 2.5), 3.6))
    rng = np.random.default_rng(1)
    a = rng.integers(-128 if a_signed else 0, 128 if a_signed else 256, n)
    b = rng.integers(-127, 128, n)
    c = rng.integers(-500, 500, lanes)
    if example is not None:
        a[:4], b[:4], c[0] = example[0], example[1], example[2]
    bw = 0.7
    for i in range(n):
        x = (n - 1 - i) * bw    # byte 0 at the right, as registers are drawn
        _rect(ax, x, 2.2, bw, 0.5, _COLORS["int8" if a_signed else "uint8"], str(a[i]), 8)
        _rect(ax, x, 1.4, bw, 0.5, _COLORS["int8"], str(b[i]), 8)
        ax.text(x + bw / 2, 2.05, "x", ha="center", va="center", fontsize=9)
    for j in range(lanes):
        x0 = (n - 4 * (j + 1)) * bw
        s = int(c[j] + np.dot(a[4 * j:4 * j + 4], b[4 * j:4 * j + 4]))
        _rect(ax, x0, 0.0, 4 * bw, 0.55, _COLORS["int32"], f"{c[j]} + 4 products = {s}", 8)
        for i in range(4):
            xm = x0 + (3 - i + 0.5) * bw
            ax.plot([xm, x0 + 2 * bw], [1.4, 0.55], color="gray", lw=0.8)
        ax.plot([x0, x0], [-0.1, 2.8], color="black", lw=2)
    ax.plot([n * bw, n * bw], [-0.1, 2.8], color="black", lw=2)
    ax.text(n * bw + 0.15, 2.45, "a: " + ("int8" if a_signed else "uint8") + " activations",
            va="center", fontsize=9)
    ax.text(n * bw + 0.15, 1.65, "b: int8 weights", va="center", fontsize=9)
    ax.text(n * bw + 0.15, 0.27, "c: int32 accumulators", va="center", fontsize=9)
    ax.text(n * bw - bw / 2, 2.95, "byte 0", ha="center", fontsize=8)
    ax.set_xlim(-0.2, n * bw + 2.6); ax.set_ylim(-0.3, 3.2); ax.axis("off")
    ax.set_title(title or f"{lanes} x 32-bit lanes: c += a0 b0 + a1 b1 + a2 b2 + a3 b3 per lane")
    fig.tight_layout()
    return fig


def cuda_tiles(M=256, N=192, BM=64, BN=64, TM=4, TN=4, thread=(5, 2)):
    """Left: the output [M, N] cut into BM x BN block tiles (one CUDA thread block each).
    Right: one tile, its (BM/TM) x (BN/TN) threads, and the TM x TN outputs of one thread
    ``thread`` = (tx, ty), strided by BM/TM rows and BN/TN columns."""
    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1]})
    for i in range(M // BM):
        for j in range(N // BN):
            hl = (i, j) == (1, 1)
            _rect(a0, j * BN, i * BM, BN, BM, "#f9cb9c" if hl else "#eeeeee",
                  f"block\n({j}, {i})", 8)
    a0.set_xlim(0, N); a0.set_ylim(M, 0); a0.set_aspect("equal")
    a0.set_xlabel("output column n (output channel)"); a0.set_ylabel("output row m")
    a0.set_title(f"grid of thread blocks: one {BM}x{BN} output tile each")
    rs, cs = BM // TM, BN // TN
    tx, ty = thread
    for k in range(0, BM + 1, rs):
        a1.axhline(k, color="gray", lw=0.8)
    for k in range(0, BN + 1, cs):
        a1.axvline(k, color="gray", lw=0.8)
    _rect(a1, 0, 0, cs, rs, "#eeeeee", linewidth=0)   # the first sub-block: one output per thread
    a1.text(cs / 2, rs / 2 + 4, f"{rs}x{cs} threads,\n1 output each", ha="center", fontsize=7)
    rows = ty + rs * np.arange(TM)
    cols = tx + cs * np.arange(TN)
    cc, rr = np.meshgrid(cols + 0.5, rows + 0.5)
    a1.scatter(cc.ravel(), rr.ravel(), marker="s", s=45, color="tab:orange", edgecolor="black",
               zorder=3, label=f"the {TM * TN} outputs of thread ({tx}, {ty})")
    for i in range(TM):
        for j in range(TN):
            a1.text(cols[j] + 2, rows[i] + 0.5, f"({i},{j})", ha="left", va="center",
                    fontsize=7)
    a1.set_xlim(0, BN); a1.set_ylim(BM, 0); a1.set_aspect("equal")
    a1.legend(loc="lower right", fontsize=8, framealpha=1)
    a1.set_xlabel(f"column in the tile ({rs}x{cs} threads, lines every {cs} columns)")
    a1.set_ylabel("row in the tile")
    a1.set_title(f"one tile: thread (tx={tx}, ty={ty}) owns {TM}x{TN} outputs\n"
                 f"rows ty + {rs} i, columns tx + {cs} j", fontsize=10)
    fig.suptitle("The CUDA int8 GEMM: block tiles and per-thread register blocks")
    fig.tight_layout()
    return fig
