"""attnhash methods: every method with one line: supervised or not, its paper, its defaults, its ablations."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the hashing methods (deep and shallow)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def describe_methods() -> list[dict]:
    import dataclasses

    from attnhash.config import method_recipe
    from attnhash.methods import METHODS

    out = []
    entries = [e for _, e in METHODS.items()]
    for entry in sorted(entries, key=lambda e: (not e.deep, e.name)):  # deep methods first, as before
        cls = entry.impl
        defaults = dataclasses.asdict(cls.Params()) if entry.deep and cls.Params else {}
        defaults.update(method_recipe(entry.name).get("method", {}).get("params", {}))
        out.append({"name": entry.name, "kind": "deep" if entry.deep else "shallow", "supervised": entry.supervised,
                    "paper": entry.paper, "summary": entry.summary, "defaults": defaults,
                    "ablations": dict(cls.ablations) if entry.deep else {}})
    return out


def run(args) -> int:
    import json

    methods = describe_methods()
    if args.json:
        print(json.dumps(methods, indent=1))
        return 0
    width = max(len(m["name"]) for m in methods)
    for m in methods:
        kind = ("supervised" if m["supervised"] else "unsupervised") + (" shallow" if m["kind"] == "shallow" else "")
        defaults = ", ".join(f"{k}={v}" for k, v in m["defaults"].items())
        ablations = f"  ablate: {', '.join(m['ablations'])}" if m["ablations"] else ""
        print(f"{m['name']:<{width}}  {kind:<19} {m['paper']}" + (f"  [{defaults}]" if defaults else "") + ablations)
    return 0
