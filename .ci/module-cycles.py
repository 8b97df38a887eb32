#!/usr/bin/env python3
"""Fails if a crate's modules import each other in a cycle (issue #13: "no import cycles").

For each crate's src/, a node per top-level module (a file or a folder under src/, and the
crate root lib.rs/main.rs); an edge for every `crate::m` a module names, for every
`super::m` a top-level file names (its sibling, or the root), and for every `m::` the root
names. Comment lines and `#[cfg(test)]` parts are left out. Prints the cycles and exits 1.
"""
import os
import re
import sys

def graph(src):
    g={}
    for root,_,files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'): continue
            p=os.path.join(root,f); rel=os.path.relpath(p,src)
            parts=rel[:-3].split('/')
            if parts[0]=='bin' or f=='tests.rs': continue
            if parts[-1]=='mod': parts=parts[:-1]
            node=parts[0] if parts and parts[0] not in ('lib','main') else 'ROOT'
            txt=open(p).read().split('#[cfg(test)]')[0]
            txt='\n'.join(l for l in txt.split('\n') if not l.strip().startswith('//'))
            deps=set(re.findall(r'crate::([a-z_]+)',txt))
            depth=len(parts)  # file at top: parts like ['admit'] -> super = ROOT
            if len(parts)==1 and node!='ROOT':
                for m in re.findall(r'super::([A-Za-z_]+)',txt):
                    deps.add(m if m[0].islower() else 'ROOT')
            if node=='ROOT':
                # root uses child modules via their names: `name::` or `use name::`
                for m in re.findall(r'(?<![:\w])([a-z_]+)::',txt):
                    deps.add(m)
            g.setdefault(node,set()).update(deps)
    nodes=set(g)
    for k in g: g[k]={d for d in g[k] if d in nodes and d!=k}
    return g
def sccs(g):
    idx={};low={};st=[];on=set();res=[];i=[0]
    def sc(v):
        idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
        for w in g[v]:
            if w not in idx: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            c=[]
            while True:
                w=st.pop();on.discard(w);c.append(w)
                if w==v: break
            if len(c)>1: res.append(sorted(c))
    for v in g:
        if v not in idx: sc(v)
    return res


def main():
    bad = False
    for src in sys.argv[1:]:
        for cycle in sccs(graph(src)):
            bad = True
            print(f"{src}: modules import each other in a cycle: {' <-> '.join(cycle)}")
    if not bad:
        print(f"no module import cycles in {len(sys.argv) - 1} crates")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

