"""
The report card of a run: every stage logs a section (markdown + a JSON copy of its data) under
<base_dir>/report/, and `generate()` stitches them into report.md with an environment header, a summary
table by stage and the total wall time.

    python -m nanochat.report reset      # start a new run's report (speedrun.sh / runcpu.sh do this first)
    python -m nanochat.report generate   # write <base_dir>/report/report.md and copy it to ./report.md
"""

import datetime
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys

from nanochat.common import REPO_DIR, get_base_dir, get_dist_info

# Sections in pipeline order; generate() concatenates whichever exist in this order.
SECTIONS = [
    "Tokenizer training",
    "Tokenizer evaluation",
    "Base model training",
    "Base model loss",
    "Base model evaluation",
    "Midtraining",
    "Chat evaluation mid",
    "Chat SFT",
    "Chat evaluation sft",
    "Chat RL",
    "Chat evaluation rl",
    "HuggingFace export",
]

# Summary table: metric name -> (section prefix to read it from, key in that section's data)
SUMMARY_METRICS = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE"]
STAGE_SECTIONS = {
    "BASE": ["Base model evaluation", "Base model training"],
    "MID": ["Chat evaluation mid"],
    "SFT": ["Chat evaluation sft"],
    "RL": ["Chat evaluation rl"],
}

# Rough on-demand prices per GPU-hour (USD, late 2026 public cloud list prices); used only for the estimate.
GPU_HOURLY_USD = [("H100", 3.00), ("H200", 3.80), ("B200", 5.50), ("A100", 1.79), ("L40S", 1.20), ("4090", 0.70)]


def slugify(section):
    return re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")


def run_git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def get_git_info():
    """Commit, branch, dirty flag and message of the repo; None fields outside a git checkout."""
    status = run_git("status", "--porcelain")
    return {
        "commit": run_git("rev-parse", "--short=12", "HEAD"),
        "branch": run_git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "message": run_git("log", "-1", "--pretty=%s"),
    }


def get_hardware_info():
    import torch

    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "gpus": [],
    }
    try:
        with open("/proc/meminfo") as f:
            info["ram_gb"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    except OSError:
        pass
    for i in range(info["gpu_count"]):
        props = torch.cuda.get_device_properties(i)
        info["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / 1024**3, 1)})
    return info


def estimate_hourly_cost(hw):
    """(USD per hour for the whole machine, how it was estimated)."""
    if not hw["gpus"]:
        return 0.0, "CPU only: no GPU rental cost counted"
    name = hw["gpus"][0]["name"]
    for key, usd in GPU_HOURLY_USD:
        if key in name:
            return usd * hw["gpu_count"], f"{hw['gpu_count']} x {name} at ${usd:.2f}/GPU-hour (list price)"
    return 2.0 * hw["gpu_count"], f"{hw['gpu_count']} x {name} at an assumed $2.00/GPU-hour"


def get_bloat_info():
    """Size of the code base (tracked source files), the number every change should keep in check."""
    files = run_git("ls-files")
    if files is None:
        return None
    exts = (".py", ".sh", ".md", ".html", ".toml")
    n_files = n_lines = n_chars = 0
    for path in files.splitlines():
        if not path.endswith(exts) or path.startswith("nanochat/data/"):
            continue
        try:
            with open(os.path.join(REPO_DIR, path), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        n_files += 1
        n_lines += text.count("\n")
        n_chars += len(text)
    return {"files": n_files, "lines": n_lines, "characters": n_chars, "approx_tokens": n_chars // 4}


def format_value(value):
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e5 else f"{value:.4e}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


def render_data(data):
    """Markdown for a list of dicts (bullets) and strings (verbatim paragraphs/tables)."""
    lines = []
    for item in data:
        if isinstance(item, dict):
            lines += [f"- {k}: {format_value(v)}" for k, v in item.items()]
        else:
            lines.append(str(item))
        lines.append("")
    return "\n".join(lines)


def flatten(data):
    merged = {}
    for item in data:
        if isinstance(item, dict):
            merged.update(item)
    return merged


class Report:
    def __init__(self, report_dir):
        self.report_dir = report_dir
        os.makedirs(report_dir, exist_ok=True)

    def log(self, section, data):
        """Write one section (overwriting an earlier one of the same name) as markdown plus JSON."""
        now = datetime.datetime.now().isoformat(timespec="seconds")
        slug = slugify(section)
        with open(os.path.join(self.report_dir, f"{slug}.md"), "w", encoding="utf-8") as f:
            f.write(f"## {section}\ntimestamp: {now}\n\n{render_data(data)}\n")
        record = {"section": section, "timestamp": now, "data": flatten(data)}
        with open(os.path.join(self.report_dir, f"{slug}.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, default=str)
        return os.path.join(self.report_dir, f"{slug}.md")

    def reset(self):
        """Clear earlier sections and write the environment header of a new run."""
        for name in os.listdir(self.report_dir):
            os.remove(os.path.join(self.report_dir, name))
        hw = get_hardware_info()
        hourly, how = estimate_hourly_cost(hw)
        header = {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "git": get_git_info(),
            "hardware": hw,
            "hourly_cost_usd": hourly,
            "cost_basis": how,
            "bloat": get_bloat_info(),
        }
        with open(os.path.join(self.report_dir, "header.json"), "w", encoding="utf-8") as f:
            json.dump(header, f, indent=2)
        return header

    def read_sections(self):
        sections = {}
        for name in os.listdir(self.report_dir):
            if name.endswith(".json") and name != "header.json":
                with open(os.path.join(self.report_dir, name), encoding="utf-8") as f:
                    record = json.load(f)
                sections[record["section"]] = record
        return sections

    def summary_table(self, sections):
        """Markdown table of the headline metrics by stage; a dash where a stage did not measure a metric."""
        stages = [s for s, names in STAGE_SECTIONS.items() if any(n in sections for n in names)]
        if not stages:
            return ""
        rows = ["| Metric | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
        for metric in SUMMARY_METRICS:
            cells = []
            for stage in stages:
                value = None
                for name in STAGE_SECTIONS[stage]:
                    value = sections.get(name, {}).get("data", {}).get(metric, value)
                    if value is not None:
                        break
                cells.append(f"{value:.4f}" if isinstance(value, (int, float)) else "-")
            if any(c != "-" for c in cells):
                rows.append(f"| {metric} | " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def generate(self, copy_to_cwd=True):
        header_path = os.path.join(self.report_dir, "header.json")
        header = None
        if os.path.exists(header_path):
            with open(header_path, encoding="utf-8") as f:
                header = json.load(f)
        sections = self.read_sections()
        out = ["# nanochat report card", ""]
        if header:
            git, hw = header["git"], header["hardware"]
            gpus = ", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in hw["gpus"]) or "none"
            out += [
                "## Environment",
                f"- run started: {header['started']}",
                f"- git: commit {git['commit']} on {git['branch']}, dirty: {git['dirty']}, message: {git['message']}",
                f"- machine: {hw['platform']}, {hw['cpu_count']} CPUs, {hw.get('ram_gb', '?')} GB RAM",
                f"- GPUs: {hw['gpu_count']} ({gpus}); CUDA {hw['cuda']}",
                f"- python {hw['python']}, torch {hw['torch']}",
                f"- cost basis: {header['cost_basis']}",
            ]
            if header.get("bloat"):
                b = header["bloat"]
                out.append(f"- code: {b['files']} files, {b['lines']} lines, ~{b['approx_tokens']} tokens")
            out.append("")
        for section in SECTIONS + sorted(set(sections) - set(SECTIONS)):
            path = os.path.join(self.report_dir, f"{slugify(section)}.md")
            if section in sections and os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    out.append(f.read())
        table = self.summary_table(sections)
        if table:
            out += ["## Summary", "", table, ""]
        if header and sections:
            start = datetime.datetime.fromisoformat(header["started"])
            end = max(datetime.datetime.fromisoformat(s["timestamp"]) for s in sections.values())
            seconds = (end - start).total_seconds()
            cost = header["hourly_cost_usd"] * seconds / 3600
            out.append(f"Total wall clock time: {seconds / 3600:.2f} h ({seconds:.0f} s); estimated cost ${cost:.2f}")
        text = "\n".join(out) + "\n"
        path = os.path.join(self.report_dir, "report.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        if copy_to_cwd:
            shutil.copyfile(path, "report.md")
        return path


class DummyReport:
    """Used on ranks other than 0 so that only one process writes the report."""

    def log(self, *args, **kwargs):
        pass

    def reset(self, *args, **kwargs):
        pass

    def generate(self, *args, **kwargs):
        pass


def get_report():
    if get_dist_info()[1] != 0:
        return DummyReport()
    return Report(os.path.join(get_base_dir(), "report"))


if __name__ == "__main__":
    commands = {
        "reset": lambda: print("report reset:", get_report().reset()["started"]),
        "generate": lambda: print("report written to", get_report().generate()),
    }
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m nanochat.report {{{'|'.join(commands)}}}")
    commands[sys.argv[1]]()
