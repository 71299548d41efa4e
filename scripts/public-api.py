#!/usr/bin/env python3
"""List a crate's public API from rustdoc JSON, one item a line, sorted.

    python3 scripts/public-api.py target/doc/meshwork_core.json

Every public path is listed, re-exports inlined where the item is the crate's own, so
that moving an item while keeping its public path changes nothing, and removing or
re-typing one shows in a diff. Lines:

    pub mod a::b
    pub struct a::b::S<T: Bound>
    pub a::b::S::field: Type
    pub fn a::b::S::method(&self, x: u32) -> Option<String>
    impl Trait for a::b::S
    pub use a::b::External = other_crate::Item     (an item of another crate)

Auto-trait and blanket impls are left out (they follow from the types). Unknown shapes of
a future rustdoc JSON are printed raw rather than dropped, so they still show in a diff.
"""

import json
import sys

SUPPORTED = range(39, 80)  # format versions whose layout this reads (ids are integers)


class Api:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.paths = doc.get("paths", {})
        self.lines = set()
        self.seen = set()
        # Distinct public items (an item re-exported under two paths counts once).
        self.items = set()
        # id -> the path of an item declared in a public module (see find_direct).
        self.direct = {}

    def find_direct(self, prefix, module):
        """Items declared in public modules, by id: their own path (re-exports aside)."""
        for cid in module.get("items", []):
            it = self.item(cid)
            if not it or it.get("visibility") != "public" or "use" in it["inner"]:
                continue
            path = f"{prefix}::{it['name']}"
            self.direct.setdefault(it["id"], path)
            if "module" in it["inner"]:
                self.find_direct(path, it["inner"]["module"])

    def item(self, id_):
        return self.index.get(str(id_))

    # --- types -----------------------------------------------------------------------
    def path_name(self, p):
        # A resolved path: its written name (`path`); crate-local ids may be renamed
        # by re-export, but the written path is what a reader of the source sees.
        name = p.get("path") or p.get("name") or "?"
        return name + self.args(p.get("args"))

    def args(self, a):
        if not a:
            return ""
        if "angle_bracketed" in a:
            ab = a["angle_bracketed"]
            parts = []
            for g in ab.get("args", []):
                if "type" in g:
                    parts.append(self.ty(g["type"]))
                elif "lifetime" in g:
                    parts.append(g["lifetime"])
                elif "const" in g:
                    parts.append(str(g["const"].get("expr", "_")))
                else:
                    parts.append("_")
            for c in ab.get("constraints", ab.get("bindings", [])):
                b = c.get("binding", {})
                if "equality" in b:
                    val = b["equality"]
                    val = self.ty(val["type"]) if "type" in val else str(val)
                    parts.append(f"{c['name']} = {val}")
                elif "constraint" in b:
                    parts.append(f"{c['name']}: {self.bounds(b['constraint'])}")
            return "<" + ", ".join(parts) + ">" if parts else ""
        if "parenthesized" in a:
            p = a["parenthesized"]
            out = "(" + ", ".join(self.ty(t) for t in p.get("inputs", [])) + ")"
            if p.get("output"):
                out += " -> " + self.ty(p["output"])
            return out
        return ""

    def bounds(self, bs):
        out = []
        for b in bs:
            if "trait_bound" in b:
                tb = b["trait_bound"]
                mod = "?" if tb.get("modifier") == "maybe" else ""
                out.append(mod + self.path_name(tb["trait"]))
            elif "outlives" in b:
                out.append(b["outlives"])
            else:
                out.append(json.dumps(b, sort_keys=True))
        return " + ".join(out)

    def ty(self, t):
        if t is None:
            return "()"
        if not isinstance(t, dict):
            return str(t)
        (k, v), = t.items()
        if k == "resolved_path":
            return self.path_name(v)
        if k == "generic":
            return v
        if k == "primitive":
            return v
        if k == "borrowed_ref":
            lt = (v.get("lifetime") + " ") if v.get("lifetime") else ""
            mut = "mut " if v.get("is_mutable", v.get("mutable")) else ""
            return f"&{lt}{mut}{self.ty(v['type'])}"
        if k == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ")"
        if k == "slice":
            return f"[{self.ty(v)}]"
        if k == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if k == "impl_trait":
            return "impl " + self.bounds(v)
        if k == "dyn_trait":
            parts = [self.path_name(x["trait"]) for x in v.get("traits", [])]
            if v.get("lifetime"):
                parts.append(v["lifetime"])
            return "dyn " + " + ".join(parts)
        if k == "raw_pointer":
            return ("*mut " if v.get("is_mutable", v.get("mutable")) else "*const ") + self.ty(v["type"])
        if k == "qualified_path":
            trait = v.get("trait")
            self_ty = self.ty(v["self_type"])
            if trait and (trait.get("path") or trait.get("name")):
                return f"<{self_ty} as {self.path_name(trait)}>::{v['name']}"
            return f"{self_ty}::{v['name']}"
        if k == "function_pointer":
            sig = v.get("sig", v.get("decl", {}))
            return "fn" + self.sig(sig, names=False)
        if k == "infer":
            return "_"
        return json.dumps(t, sort_keys=True)

    def generics(self, g):
        if not g:
            return ""
        parts = []
        for p in g.get("params", []):
            kind = p.get("kind", {})
            if "lifetime" in kind:
                parts.append(p["name"])
            elif "type" in kind:
                if kind["type"].get("is_synthetic", kind["type"].get("synthetic")):
                    continue  # `impl Trait` in argument position: shown in the argument
                b = self.bounds(kind["type"].get("bounds", []))
                d = kind["type"].get("default")
                parts.append(p["name"] + (f": {b}" if b else "") + (f" = {self.ty(d)}" if d else ""))
            elif "const" in kind:
                parts.append(f"const {p['name']}: {self.ty(kind['const']['type'])}")
        out = "<" + ", ".join(parts) + ">" if parts else ""
        wh = []
        for w in g.get("where_predicates", []):
            if "bound_predicate" in w:
                bp = w["bound_predicate"]
                wh.append(f"{self.ty(bp['type'])}: {self.bounds(bp.get('bounds', []))}")
            else:
                wh.append(json.dumps(w, sort_keys=True))
        if wh:
            out += " where " + ", ".join(wh)
        return out

    def sig(self, s, names=True):
        args = []
        for name, t in s.get("inputs", []):
            if names and name == "self":
                rendered = self.ty(t)
                args.append({"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}.get(rendered, "self: " + rendered))
            else:
                args.append(f"{name}: {self.ty(t)}" if names else self.ty(t))
        out = "(" + ", ".join(args) + ")"
        if s.get("output") is not None:
            out += " -> " + self.ty(s["output"])
        return out

    # --- items -----------------------------------------------------------------------
    def add(self, line):
        self.lines.add(line)

    def function(self, path, f):
        h = f.get("header", {})
        q = ("const " if h.get("is_const", h.get("const")) else "") + (
            "async " if h.get("is_async", h.get("async")) else "") + (
            "unsafe " if h.get("is_unsafe", h.get("unsafe")) else "")
        g = f.get("generics")
        gen = self.generics({"params": g.get("params", [])}) if g else ""
        wh = self.generics({"where_predicates": g.get("where_predicates", [])}) if g else ""
        self.add(f"pub {q}fn {path}{gen}{self.sig(f['sig'])}{wh}")

    def impls(self, path, impl_ids):
        for iid in impl_ids:
            it = self.item(iid)
            if not it or "impl" not in it["inner"]:
                continue
            im = it["inner"]["impl"]
            if im.get("is_synthetic", im.get("synthetic")) or im.get("blanket_impl"):
                continue
            if im.get("trait"):
                neg = "!" if im.get("is_negative", im.get("negative")) else ""
                # Only the trait's name and the impl's generics: the items follow the trait.
                for_ = im["for"]
                args = self.args(for_["resolved_path"].get("args")) if "resolved_path" in for_ else ""
                self.add(f"impl{self.generics(im.get('generics'))} {neg}{self.path_name(im['trait'])} for {path}{args}")
                continue
            for mid in im.get("items", []):
                m = self.item(mid)
                if not m or m.get("visibility") != "public":
                    continue
                self.member(f"{path}::{m['name']}", m)

    def member(self, path, m):
        self.items.add(m["id"])
        (k, v), = m["inner"].items()
        if k == "function":
            self.function(path, v)
        elif k == "assoc_const":
            self.add(f"pub const {path}: {self.ty(v.get('type'))}")
        elif k == "assoc_type":
            self.add(f"pub type {path}")
        elif k == "constant":
            self.add(f"pub const {path}: {self.ty(v.get('type'))}")
        else:
            self.add(f"pub {k} {path}")

    def fields(self, path, ids, tuple_=False):
        for n, fid in enumerate(ids):
            if fid is None:
                continue
            f = self.item(fid)
            if not f or f.get("visibility") != "public":
                continue
            name = str(n) if tuple_ else f["name"]
            self.items.add(fid)
            self.add(f"pub {path}::{name}: {self.ty(f['inner']['struct_field'])}")

    def walk(self, path, it):
        (k, v), = it["inner"].items()
        key = (path, it["id"])
        if key in self.seen:
            return
        self.seen.add(key)
        self.items.add(it["id"])
        if k == "module":
            self.add(f"pub mod {path}")
            for cid in v.get("items", []):
                self.child(path, cid)
        elif k == "struct":
            self.add(f"pub struct {path}{self.generics(v.get('generics'))}")
            kind = v.get("kind", {})
            if isinstance(kind, dict) and "plain" in kind:
                self.fields(path, kind["plain"].get("fields", []))
                if kind["plain"].get("has_stripped_fields", kind["plain"].get("fields_stripped")):
                    pass
            elif isinstance(kind, dict) and "tuple" in kind:
                self.fields(path, kind["tuple"], tuple_=True)
            self.impls(path, v.get("impls", []))
        elif k == "enum":
            self.add(f"pub enum {path}{self.generics(v.get('generics'))}")
            for vid in v.get("variants", []):
                var = self.item(vid)
                if not var:
                    continue
                self.items.add(vid)
                vk = var["inner"]["variant"].get("kind")
                vpath = f"{path}::{var['name']}"
                if isinstance(vk, dict) and "tuple" in vk:
                    tys = [self.ty(self.item(f)["inner"]["struct_field"]) if f is not None and self.item(f) else "_" for f in vk["tuple"]]
                    self.add(f"pub {vpath}({', '.join(tys)})")
                elif isinstance(vk, dict) and "struct" in vk:
                    self.add(f"pub {vpath} {{ .. }}")
                    for fid in vk["struct"].get("fields", []):
                        f = self.item(fid)
                        if f:
                            self.add(f"pub {vpath}::{f['name']}: {self.ty(f['inner']['struct_field'])}")
                else:
                    self.add(f"pub {vpath}")
            self.impls(path, v.get("impls", []))
        elif k == "union":
            self.add(f"pub union {path}")
            self.impls(path, v.get("impls", []))
        elif k == "trait":
            unsafe = "unsafe " if v.get("is_unsafe") else ""
            self.add(f"pub {unsafe}trait {path}{self.generics(v.get('generics'))}")
            for mid in v.get("items", []):
                m = self.item(mid)
                if m:
                    self.member(f"{path}::{m['name']}", m)
        elif k == "function":
            self.function(path, v)
        elif k == "type_alias":
            self.add(f"pub type {path}{self.generics(v.get('generics'))} = {self.ty(v.get('type'))}")
        elif k in ("constant", "static"):
            self.add(f"pub {'const' if k == 'constant' else 'static'} {path}: {self.ty(v.get('type'))}")
        elif k in ("macro", "proc_macro"):
            self.add(f"pub macro {path}!")
        else:
            self.add(f"pub {k} {path}")

    def child(self, prefix, cid):
        it = self.item(cid)
        if not it or it.get("visibility") != "public":
            return
        inner = it["inner"]
        if "use" in inner:
            u = inner["use"]
            target = self.item(u["id"]) if u.get("id") is not None else None
            if u.get("is_glob", u.get("glob")):
                if target and "module" in target["inner"]:
                    for gid in target["inner"]["module"].get("items", []):
                        self.child(prefix, gid)
                else:
                    self.add(f"pub use {prefix}::* = {u['source']}::*")
                return
            name = u["name"]
            canonical = self.direct.get(u.get("id"))
            if canonical is not None and canonical != f"{prefix}::{name}":
                # A second path to an item listed under its own: one line, not a copy.
                self.add(f"pub use {prefix}::{name} = {canonical}")
            elif target and target.get("crate_id") == 0:
                # The first path met is the item's listing; later ones are aliases of it.
                self.direct.setdefault(u["id"], f"{prefix}::{name}")
                self.walk(f"{prefix}::{name}", target)
            else:
                self.add(f"pub use {prefix}::{name} = {u['source']}")
            return
        if it.get("name") is None:
            return
        self.walk(f"{prefix}::{it['name']}", it)


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.load(open(argv[0], encoding="utf-8"))
    version = doc.get("format_version")
    if version not in SUPPORTED:
        print(f"rustdoc JSON format {version} is not one this script reads "
              f"({SUPPORTED.start}..{SUPPORTED.stop - 1}); update scripts/public-api.py",
              file=sys.stderr)
        return 1
    api = Api(doc)
    root = api.item(doc["root"])
    name = root["name"]
    api.find_direct(name, root["inner"]["module"])
    api.lines.add(f"pub mod {name}")
    for cid in root["inner"]["module"].get("items", []):
        api.child(name, cid)
    for line in sorted(api.lines):
        print(line)
    print(f"{name}: {len(api.items)} distinct public items, {len(api.lines)} lines",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
