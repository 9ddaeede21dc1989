"""The paper's own numbers (GitHub ``Nix07/spatial-variable-binding`` result files), shown in the report
beside ours when the model is one of the paper's.

Example:
    >>> paper_model("Qwen/Qwen2-VL-7B-Instruct"), TABLE1["qwen2-vl-7b"]["squares"]
    ('qwen2-vl-7b', 0.998)
"""

from __future__ import annotations

import html

#: behavioral_analysis/results/table1_summary.csv (repo values; the paper's rounded ones in PAPER_TABLE1).
TABLE1 = {"qwen2-vl-7b": {"squares": 0.998, "shapes": 1.000, "objects": 1.000, "whatsup": 0.728},
          "gemma-3-4b": {"squares": 0.975, "shapes": 0.985, "objects": 0.987, "whatsup": 0.625},
          "pixtral-12b": {"squares": 0.550, "shapes": 0.523, "objects": 0.627, "whatsup": 0.438}}
PAPER_TABLE1 = {"qwen2-vl-7b": {"squares": 1.00, "shapes": 1.00, "objects": 0.73, "whatsup": 0.73},
                "gemma-3-4b": {"squares": 0.98, "shapes": 0.99, "objects": 0.99, "whatsup": 0.62},
                "pixtral-12b": {"squares": 0.60, "shapes": 0.55, "objects": 0.63, "whatsup": 0.43}}
#: behavioral_analysis_wo_ve_oi/results/table5_summary.csv (accuracy after the removal).
TABLE5 = {"qwen2-vl-7b": {"squares": 0.596, "shapes": 0.613, "objects": 0.427},
          "gemma-3-4b": {"squares": 0.567, "shapes": 0.635, "objects": 0.541},
          "pixtral-12b": {"squares": 0.408, "shapes": 0.758, "objects": 0.418}}
PAPER_TABLE5 = {"qwen2-vl-7b": {"squares": 0.60, "shapes": 0.62, "objects": 0.43},
                "gemma-3-4b": {"squares": 0.64, "shapes": 0.82, "objects": 0.77},
                "pixtral-12b": {"squares": 0.17, "shapes": 0.01, "objects": 0.39}}
#: probing/figures/summary_table.csv: held-out object-token accuracy (about 1.0 where not listed).
PROBES = {"pixtral-12b": {"squares": 0.897, "whatsup": 0.863}, "qwen2-vl-7b": {"whatsup": 0.951},
          "gemma-3-4b": {"whatsup": 0.956}}
#: The package README: strict COCO accuracy, fp32 (correct / items).
COCO = {"gemma-3-4b": {"all": (231, 440), "horizontal": (141, 279), "vertical": (90, 161)},
        "pixtral-12b": {"all": (395, 440), "horizontal": (245, 279), "vertical": (150, 161)}}
SOURCES = {"behaviour": "behavioral_analysis/results/table1_summary.csv",
           "remove_vision_order": "behavioral_analysis_wo_ve_oi/results/table5_summary.csv",
           "position_probes": "probing/figures/summary_table.csv"}
_TABLES = {"behaviour": (TABLE1, PAPER_TABLE1), "remove_vision_order": (TABLE5, PAPER_TABLE5)}
_NAMES = {"qwen2-vl-7b": ("qwen2-vl-7b",), "gemma-3-4b": ("gemma-3-4b",), "pixtral-12b": ("pixtral-12b", "pixtral")}


def paper_model(*names: str) -> str | None:
    """The paper's key of a model named (hub id, path or repr) like one of the paper's, else None.

    Example:
        >>> paper_model("toy") is None
        True
    """
    for name in names:
        low = name.lower().replace("_", "-")
        for key, marks in _NAMES.items():
            if any(mark in low for mark in marks):
                return key
    return None


def official_html(experiment: str, *names: str) -> str:
    """The paper's numbers for ``experiment`` as an HTML paragraph, or "" (not one of the paper's models)."""
    key = paper_model(*names)
    if key is None or experiment not in _TABLES and experiment != "position_probes":
        return ""
    if experiment == "position_probes":
        values = {task: PROBES.get(key, {}).get(task, 1.0) for task in ("squares", "whatsup")}
        text = ", ".join(f"{task} {v:.3f}" for task, v in values.items())
    else:
        repo, paper = (table[key] for table in _TABLES[experiment])
        text = ", ".join(f"{task} {repo[task]:.3f} (paper {paper[task]:.2f})" for task in repo)
    return (f"<p class='rule'>The paper's numbers for {html.escape(key)} ({html.escape(SOURCES[experiment])}): "
            f"{html.escape(text)}.</p>")
