"""Bar chart of RESULTS.md's summary (sglserve vs peers vs targets) -> benchmarks/results/summary.png.

The numbers are the measured rows of RESULTS.md (H100, 2026-11-25); edit them here when new rows land.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROWS = {  # workload: (sglserve, transformers peer, published peer, target, published peer name)
    "W1 batch-1 decode\n8B, tok/s": (163.2, 116.6, 156, 170, "SGLang"),
    "W2 offline 1000x256/256\n8B, tok/s": (12566, 743, 11364, 14000, "vLLM"),
    "W5 Qwen3-0.6B\n256 seqs, tok/s": (16277, 582, None, 15000, ""),
}
PROGRESS = [("R1", 148.5), ("R2", 153.2), ("R3", 163.2)]

fig, axes = plt.subplots(1, len(ROWS) + 1, figsize=(16, 4.2))
for ax, (name, (ours, hf, pub, target, pub_name)) in zip(axes, ROWS.items()):
    hf_label = "transformers" if "W1" in name else "transformers*"
    labels, values, colors = ["sglserve", hf_label], [ours, hf], ["tab:blue", "tab:gray"]
    if pub:
        labels.append(f"{pub_name} (published)"), values.append(pub), colors.append("tab:orange")
    ax.bar(labels, values, color=colors)
    ax.axhline(target, color="red", linestyle="--", label=f"target {target:,}")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
ax = axes[-1]
ax.plot([r for r, _ in PROGRESS], [v for _, v in PROGRESS], marker="o")
ax.axhline(170, color="red", linestyle="--", label="target 170")
ax.set_title("W1 tok/s across rows", fontsize=9)
ax.legend(fontsize=7)
fig.text(0.01, 0.01, "* figure quoted by the issue, not measured in this session", fontsize=7)
fig.tight_layout(rect=(0, 0.04, 1, 1))
fig.savefig("benchmarks/results/summary.png", dpi=110)
print("wrote benchmarks/results/summary.png")
