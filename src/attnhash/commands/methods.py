"""attnhash methods: every method with one line: supervised or not, its paper, its defaults, its ablations."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the hashing methods (deep and shallow)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def describe_methods() -> list[dict]:
    import dataclasses

    from attnhash.config import method_recipe
    from attnhash.methods.base import available_methods
    from attnhash.shallow import SHALLOW_METHODS

    out = []
    for name, cls in available_methods().items():
        defaults = dataclasses.asdict(cls.Params()) if cls.Params else {}
        defaults.update(method_recipe(name).get("method", {}).get("params", {}))
        out.append({"name": name, "kind": "deep", "supervised": cls.supervised, "paper": cls.paper,
                    "summary": cls.summary, "defaults": defaults, "ablations": dict(cls.ablations)})
    for name, cls in sorted(SHALLOW_METHODS.items()):
        out.append({"name": name, "kind": "shallow", "supervised": False, "paper": getattr(cls, "paper", ""),
                    "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                    "defaults": {}, "ablations": {}})
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
