//! `attn fetch`: download the pinned models and data sets into `$ATTN_HOME`.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use attn_models::fetch;

fn size(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.0} kB", bytes as f64 / 1e3)
    }
}

fn list() -> Result<()> {
    let rows: Vec<[String; 5]> = fetch::assets()
        .iter()
        .map(|a| {
            let fetched = fetch::is_fetched(a.name);
            let path = fetch::path_of(a.name).map(|p| p.display().to_string()).unwrap_or_default();
            [
                a.name.to_string(),
                a.description.to_string(),
                size(a.approx_bytes),
                if fetched { "yes" } else { "no" }.to_string(),
                if fetched { path } else { "-".to_string() },
            ]
        })
        .collect();
    let header = ["name", "description", "size", "fetched", "path"].map(String::from);
    let mut width = [0usize; 5];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String; 5]| -> String {
        let mut s = String::new();
        for (i, c) in r.iter().enumerate() {
            match i {
                4 => s += c,
                2 => s += &format!("{c:>w$}  ", w = width[i]),
                _ => s += &format!("{c:<w$}  ", w = width[i]),
            }
        }
        s.trim_end().to_string()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line(&header))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    writeln!(out)?;
    writeln!(out, "cache: {} (set ATTN_HOME to move it)", fetch::home().display())?;
    writeln!(
        out,
        "`attn fetch` gets {}; `attn fetch NAME…` those; `attn fetch --all` everything.",
        fetch::DEFAULT.join(", ")
    )?;
    Ok(())
}

/// `attn fetch [NAME…] [--all] [--list]`; without names, the default set ([`fetch::DEFAULT`]).
/// Progress goes to stderr and `NAME<TAB>PATH` of each asset to stdout; a failed asset does not
/// stop the others, but the command then fails naming it.
pub fn run(names: &[String], all: bool, list_only: bool) -> Result<()> {
    if list_only {
        return list();
    }
    let wanted: Vec<&'static fetch::Asset> = if all {
        fetch::assets().iter().collect()
    } else if names.is_empty() {
        fetch::DEFAULT.iter().map(|n| fetch::find(n)).collect::<Result<_, _>>()?
    } else {
        // Check every name before downloading anything.
        names.iter().map(|n| fetch::find(n)).collect::<Result<_, _>>()?
    };
    let mut failed = Vec::new();
    for a in wanted {
        let t = Instant::now();
        let was = fetch::is_fetched(a.name);
        match fetch::ensure_with(a.name, &|m| eprintln!("{m}")) {
            Ok(p) => {
                if was {
                    eprintln!("{}: already fetched", a.name);
                } else {
                    eprintln!(
                        "{}: done in {:.1} s ({})",
                        a.name,
                        t.elapsed().as_secs_f64(),
                        size(fetch::disk_usage(&p))
                    );
                }
                println!("{}\t{}", a.name, p.display());
            }
            Err(e) => {
                eprintln!("{}: failed: {e}", a.name);
                failed.push(a.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not fetch {}", failed.join(", "));
    }
    Ok(())
}
