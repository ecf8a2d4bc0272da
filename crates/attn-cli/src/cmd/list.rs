//! `attn list`: the registry in priority order, with capabilities.

use std::io::Write;

use anyhow::Result;
use attn::{Exactness, Method};
use serde::Serialize;

use crate::config::{ListConfig, Runtime};

/// One method as `--json` prints it.
#[derive(Debug, Serialize)]
struct Entry {
    priority: usize,
    name: &'static str,
    family: &'static str,
    exact: bool,
    reference: bool,
    /// `exact`, `approximate` (of softmax attention) or `not softmax` (linear / recurrent).
    exactness: &'static str,
    description: &'static str,
    dtypes: Vec<&'static str>,
    masks: Vec<&'static str>,
    max_head_dim: Option<usize>,
    gqa: bool,
    softcap: bool,
    alibi: bool,
    max_query_rows: Option<usize>,
    min_kv: usize,
    /// Tunable parameters with their defaults (`name:key=value,…` in a method spec).
    params: Vec<Param>,
}

/// One parameter of a method.
#[derive(Debug, Serialize)]
struct Param {
    name: &'static str,
    default: String,
    doc: &'static str,
}

fn entry(priority: usize, m: &dyn Method) -> Entry {
    let c = m.capabilities();
    Entry {
        priority,
        name: m.name(),
        family: m.family(),
        exact: m.exactness() == Exactness::Exact,
        reference: m.is_reference(),
        exactness: match m.exactness() {
            Exactness::Exact => "exact",
            Exactness::Approximate => "approximate",
            Exactness::NotSoftmax => "not softmax",
        },
        description: m.description(),
        dtypes: c.dtypes.iter().map(|d| d.name()).collect(),
        masks: c.masks.iter().map(|k| k.name()).collect(),
        // usize::MAX means "no limit"; JSON readers get null rather than 18446744073709551615.
        max_head_dim: (c.max_head_dim != usize::MAX).then_some(c.max_head_dim),
        gqa: c.gqa,
        softcap: c.softcap,
        alibi: c.alibi,
        max_query_rows: c.max_query_rows,
        min_kv: c.min_kv,
        params: m
            .params()
            .into_iter()
            .map(|p| Param { name: p.name, default: p.value, doc: p.doc })
            .collect(),
    }
}

pub fn run(cfg: &ListConfig, rt: &Runtime) -> Result<()> {
    let registered = attn::registry().methods();
    let named = !cfg.methods.is_empty();
    let entries: Vec<Entry> = if named {
        let priority = |m: &dyn Method| {
            registered.iter().position(|r| r.name() == m.name()).map_or(0, |i| i + 1)
        };
        cfg.methods.iter().map(|m| entry(priority(&**m), &**m)).collect()
    } else {
        registered.iter().enumerate().map(|(i, m)| entry(i + 1, *m)).collect()
    };
    rt.write_json(&entries)?;
    if rt.json_to_stdout() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Methods in priority order (auto selection takes the first exact, non-reference"
    )?;
    writeln!(out, "method that accepts the problem; references run when nothing else does):")?;
    for e in &entries {
        let kind = match (e.exactness, e.reference) {
            ("exact", true) => "exact, reference",
            ("approximate", true) => "approximate, reference",
            ("not softmax", true) => "not softmax, reference",
            (k, _) => k,
        };
        let yes = |b: bool| if b { "yes" } else { "no" };
        let limit = |x: Option<usize>| x.map_or("any".to_string(), |n| format!("≤ {n}"));
        writeln!(out)?;
        writeln!(out, "{:>2}. {}  [{}; {}]", e.priority, e.name, e.family, kind)?;
        writeln!(out, "    {}", e.description)?;
        writeln!(
            out,
            "    dtypes {}  ·  head dim {}  ·  gqa {}  ·  softcap {}  ·  alibi {}",
            e.dtypes.join(","),
            limit(e.max_head_dim),
            yes(e.gqa),
            yes(e.softcap),
            yes(e.alibi)
        )?;
        writeln!(
            out,
            "    query rows per kv head {}  ·  min S_kv {}",
            limit(e.max_query_rows),
            e.min_kv
        )?;
        writeln!(out, "    masks {}", e.masks.join(", "))?;
        if named {
            for p in &e.params {
                writeln!(out, "    {}={}  {}", p.name, p.default, p.doc)?;
            }
        } else if !e.params.is_empty() {
            let kv: Vec<String> =
                e.params.iter().map(|p| format!("{}={}", p.name, p.default)).collect();
            writeln!(out, "    params {}  (attn list {} explains them)", kv.join(","), e.name)?;
        }
    }
    Ok(())
}
