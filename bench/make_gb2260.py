"""Build ``mappers/data/gb2260.csv`` (GB/T 2260 divisions, current and retired) from two public
repositories fetched as git mirrors (nothing of them is committed, only the table):

- ``cn/GB2260`` (https://github.com/cn/GB2260), ``mca/*.tsv``: the code lists the Ministry of Civil
  Affairs (民政部) published as GB/T 2260 updates, 1980-12 .. 2019-04;
- ``modood/Administrative-divisions-of-China``: the National Bureau of Statistics' yearly area
  codes (统计用区划代码), one git commit per year, 2019-10 .. 2023-06. Those lists also hold
  statistical-only functional zones (经济技术开发区, 工业园区: county digits ``7x``), which are not
  GB/T 2260 divisions: a ``7x`` code that no Civil Affairs list ever had is left out.

Placeholder rows (市辖区, 县, 省直辖县级行政区划) are not divisions and are left out: a county-level
division under one has the province as its parent. A row is one (code, name) pair: ``since`` is
the year of the first list that has it, ``retired`` the year of the first later list without it
(empty: in the newest list, current).

    python bench/make_gb2260.py GB2260_GIT_DIR MODOOD_GIT_DIR [--out mappers/data/gb2260.csv]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
from pathlib import Path

# modood commits, each the statistical codes as of the date named (its commit messages).
MODOOD_SNAPSHOTS = (("201910", "2824502"), ("202006", "78b6f36"), ("202110", "0b7fd75"),
                    ("202210", "d33ad30"), ("202306", "dc3a1d7"))
PLACEHOLDERS = frozenset({"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"})
SOURCE = ("# GB/T 2260 divisions: cn/GB2260 mca/*.tsv (Ministry of Civil Affairs, 1980-2019) and "
          "modood/Administrative-divisions-of-China (National Bureau of Statistics, 2019-2023); "
          "made by bench/make_gb2260.py")


def _git_show(repo: Path, rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def gb2260_lists(repo: Path) -> dict[str, dict[str, str]]:
    """Revision (yyyymm) -> {code: name} of every Civil Affairs list."""
    names = _git_show(repo, "HEAD", "revisions.json")
    out = {}
    for rev in json.loads(names)["mca"]:
        rows = csv.DictReader(io.StringIO(_git_show(repo, "HEAD", f"mca/{rev}.tsv")), delimiter="\t")
        out[rev] = {r["Code"]: r["Name"] for r in rows}
    revs = sorted(out)
    for before, rev, after in zip(revs, revs[1:], revs[2:]):
        _mend(out[before], out[rev], out[after])
    return out


def _mend(before: dict[str, str], codes: dict[str, str], after: dict[str, str]) -> None:
    """Put back a province or city that one list files under a county code: 1987's has
    339007 安徽省 and 339008 合肥市, and misses 340000 and 340100, which the lists before and
    after have (a city that ends, 巢湖市 341400 in 2011, is no such gap)."""
    upper = {name: code for code, name in before.items()
             if code.endswith("00") and code not in codes and after.get(code) == name}
    for code, name in list(codes.items()):
        if not code.endswith("00") and name in upper:
            del codes[code]
            codes[upper[name]] = name


def modood_lists(repo: Path, known: set[str]) -> dict[str, dict[str, str]]:
    """Revision -> {code: name} of each statistical snapshot, functional zones left out."""
    out = {}
    for rev, commit in MODOOD_SNAPSHOTS:
        codes: dict[str, str] = {}
        for file, width in (("provinces.csv", 2), ("cities.csv", 4), ("areas.csv", 6)):
            for r in csv.DictReader(io.StringIO(_git_show(repo, commit, f"dist/{file}"))):
                code = r["code"].ljust(6, "0")
                if width == 6 and code[4] == "7" and code not in known:
                    continue
                codes[code] = r["name"]
        out[rev] = codes
    return out


def _parent(code: str, names: dict[str, str]) -> str:
    if code.endswith("0000"):
        return ""
    city = code[:4] + "00"
    if not code.endswith("00") and names.get(city, "市辖区") not in PLACEHOLDERS:
        return city
    return code[:2] + "0000"


def rows(lists: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    revisions = sorted(lists)
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for i, rev in enumerate(revisions):
        for code, name in lists[rev].items():
            if name in PLACEHOLDERS:
                continue
            row = seen.setdefault((code, name), {"code": code, "name": name, "since": rev[:4]})
            row["parent"] = _parent(code, lists[rev])
            row["level"] = "province" if code.endswith("0000") else "city" if code.endswith("00") else "county"
            following = revisions[i + 1] if i + 1 < len(revisions) else None
            row["retired"] = following[:4] if following and lists[following].get(code) != name else ""
    return sorted(seen.values(), key=lambda r: (r["code"], r["retired"] or "9999", r["since"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gb2260", type=Path)
    ap.add_argument("modood", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "mappers/data/gb2260.csv")
    args = ap.parse_args()
    lists = gb2260_lists(args.gb2260)
    known = {code for codes in lists.values() for code in codes}
    lists.update(modood_lists(args.modood, known))
    table = rows(lists)
    with args.out.open("w", encoding="utf-8", newline="") as f:
        f.write(SOURCE + "\n")
        writer = csv.DictWriter(f, ("code", "name", "parent", "level", "since", "retired"), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    current = sum(1 for r in table if not r["retired"])
    print(f"{args.out}: {len(table)} rows, {current} current, {len(lists)} lists {min(lists)}..{max(lists)}")


if __name__ == "__main__":
    main()
