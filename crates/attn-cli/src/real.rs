//! Real Q/K/V for `attn bench --qkv`: heads recorded by `attn capture` (a `.safetensors` file with
//! `L{layer}.H{head}.B{b}.{q,k,v}` tensors `[S, D]` and each record's scale in the metadata),
//! tiled along the sequence to the benchmark's length.
//!
//! - **Tiling**: row `i` of a benchmark head is row `i mod S_rec` of the record, for queries,
//!   keys and values alike. The positional encoding (RoPE) was applied at capture time, so a
//!   tiled sequence repeats the same relative structure every `S_rec` rows: local bands, sinks
//!   at each tile start, the same columns. Benchmarks must say so.
//! - **Joined heads**: `L3.H0.B0+L3.H1.B0` concatenates two records along `D` (a `D = 128` head
//!   from two `D = 64` heads); the queries are multiplied by `√(D_joined) · scale_rec`, so that
//!   the benchmark's default scale `1/√D_joined` gives logits equal to the **sum** of the parts'
//!   logits as the model scaled them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// One benchmark head: q, k, v `[S_rec, D]`.
#[derive(Debug, Clone)]
pub struct RealHead {
    /// The record key(s), joined with `+`.
    pub label: String,
    pub s: usize,
    pub d: usize,
    pub dv: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Every head a benchmark case cycles through.
#[derive(Debug, Clone)]
pub struct RealInputs {
    pub file: PathBuf,
    pub heads: Vec<RealHead>,
}

impl RealInputs {
    /// Reads `file`; `select` lists record keys (`L3.H0.B0`, joined with `+`), empty = every
    /// record in the file.
    pub fn load(file: &Path, select: &[String]) -> Result<Self> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("{}: not a valid .safetensors file ({e})", file.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a valid .safetensors file ({e})", file.display()))?;
        let scales: BTreeMap<String, f64> = meta
            .metadata()
            .as_ref()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let j: serde_json::Value = serde_json::from_str(v).ok()?;
                        Some((k.clone(), j.get("scale")?.as_f64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut keys: Vec<String> = select.to_vec();
        if keys.is_empty() {
            let mut all: Vec<String> = st
                .names()
                .iter()
                .filter_map(|n| n.strip_suffix(".q").map(str::to_string))
                .collect();
            all.sort_by_key(|k| record_order(k));
            keys = all;
        }
        ensure!(!keys.is_empty(), "{} holds no recorded heads (`….q` tensors)", file.display());
        let read = |name: &str| -> Result<(Vec<f32>, usize, usize)> {
            let t = st.tensor(name).map_err(|_| {
                anyhow!("{}: no tensor {name:?} (record keys look like L3.H0.B0)", file.display())
            })?;
            ensure!(
                t.dtype() == safetensors::Dtype::F32 && t.shape().len() == 2,
                "{name}: expected an F32 [S, D] tensor, got {:?} {:?}",
                t.dtype(),
                t.shape()
            );
            let x = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((x, t.shape()[0], t.shape()[1]))
        };
        let mut heads = Vec::new();
        for key in &keys {
            let parts: Vec<&str> = key.split('+').map(str::trim).collect();
            let mut recs = Vec::new();
            for p in &parts {
                let q = read(&format!("{p}.q"))?;
                let k = read(&format!("{p}.k"))?;
                let v = read(&format!("{p}.v"))?;
                ensure!(
                    q.1 == k.1 && k.1 == v.1 && q.2 == k.2,
                    "{p}: q {}x{}, k {}x{}, v {}x{} (expected S_q = S_kv and equal D)",
                    q.1,
                    q.2,
                    k.1,
                    k.2,
                    v.1,
                    v.2
                );
                let scale = scales.get(*p).copied().unwrap_or(1.0 / (q.2 as f64).sqrt());
                recs.push((q, k, v, scale));
            }
            let s = recs[0].0 .1;
            if recs.iter().any(|r| r.0 .1 != s) {
                bail!("{key}: joined records have different lengths");
            }
            let d: usize = recs.iter().map(|r| r.0 .2).sum();
            let dv: usize = recs.iter().map(|r| r.2 .2).sum();
            let mut h = RealHead {
                label: key.clone(),
                s,
                d,
                dv,
                q: vec![0.0; s * d],
                k: vec![0.0; s * d],
                v: vec![0.0; s * dv],
            };
            let (mut off, mut offv) = (0, 0);
            for (q, k, v, scale) in &recs {
                // Logits of the joined head at scale 1/√d are the sum of the parts' logits.
                let mul = ((d as f64).sqrt() * scale) as f32;
                for i in 0..s {
                    for j in 0..q.2 {
                        h.q[i * d + off + j] = q.0[i * q.2 + j] * mul;
                        h.k[i * d + off + j] = k.0[i * k.2 + j];
                    }
                    for j in 0..v.2 {
                        h.v[i * dv + offv + j] = v.0[i * v.2 + j];
                    }
                }
                off += q.2;
                offv += v.2;
            }
            heads.push(h);
        }
        Ok(Self { file: file.to_path_buf(), heads })
    }

    /// `[1, H, S, D]` q, k, v tiled from the heads (head `h` uses record `h mod n`).
    pub fn tiled(&self, h: usize, s: usize, d: usize, dv: usize) -> Result<[Vec<f32>; 3]> {
        let mut out = [vec![0f32; h * s * d], vec![0f32; h * s * d], vec![0f32; h * s * dv]];
        for hi in 0..h {
            let r = &self.heads[hi % self.heads.len()];
            ensure!(
                r.d == d && r.dv == dv,
                "--qkv head {} has D = {}, D_v = {}; the shape asks for d{d} (dv{dv})",
                r.label,
                r.d,
                r.dv
            );
            for i in 0..s {
                let src = i % r.s;
                let dst = hi * s + i;
                out[0][dst * d..(dst + 1) * d].copy_from_slice(&r.q[src * d..(src + 1) * d]);
                out[1][dst * d..(dst + 1) * d].copy_from_slice(&r.k[src * d..(src + 1) * d]);
                out[2][dst * dv..(dst + 1) * dv].copy_from_slice(&r.v[src * dv..(src + 1) * dv]);
            }
        }
        Ok(out)
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let labels: Vec<&str> = self.heads.iter().map(|h| h.label.as_str()).collect();
        format!(
            "real inputs from {} ({} recorded rows, tiled): {}",
            self.file.display(),
            self.heads[0].s,
            labels.join(", ")
        )
    }
}

/// `L3.H10.B0` → (3, 10, 0) for sorting.
fn record_order(k: &str) -> (usize, usize, usize) {
    let n: Vec<usize> =
        k.split('.').map(|p| p.trim_start_matches(['L', 'H', 'B']).parse().unwrap_or(0)).collect();
    (
        n.first().copied().unwrap_or(0),
        n.get(1).copied().unwrap_or(0),
        n.get(2).copied().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// A capture-format file with two records of `s` rows: L0.H0.B0 (D = 2) and L1.H1.B0 (D = 3).
    /// `name` keeps the tests, which run in parallel threads of one process, on separate files.
    fn file(s: usize, name: &str) -> (PathBuf, Vec<Vec<f32>>) {
        let dir = std::env::temp_dir().join(format!("attn-real-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qkv.safetensors");
        let mut data = Vec::new();
        let mut names = Vec::new();
        for (key, d) in [("L0.H0.B0", 2usize), ("L1.H1.B0", 3)] {
            for (t, base) in [("q", 1.0f32), ("k", 100.0), ("v", 1000.0)] {
                let x: Vec<f32> = (0..s * d)
                    .map(|i| base * (i as f32 + 1.0) * if d == 3 { -1.0 } else { 1.0 })
                    .collect();
                names.push((format!("{key}.{t}"), vec![s, d]));
                data.push(x);
            }
        }
        let bytes: Vec<Vec<u8>> =
            data.iter().map(|x| x.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let views: Vec<(String, TensorView)> = names
            .iter()
            .zip(&bytes)
            .map(|((n, sh), b)| {
                (n.clone(), TensorView::new(safetensors::Dtype::F32, sh.clone(), b).unwrap())
            })
            .collect();
        let meta: std::collections::HashMap<String, String> = [
            ("L0.H0.B0".to_string(), "{\"scale\":0.5}".to_string()),
            ("L1.H1.B0".to_string(), "{\"scale\":0.25}".to_string()),
        ]
        .into_iter()
        .collect();
        safetensors::serialize_to_file(views, &Some(meta), &path).unwrap();
        (path, data)
    }

    #[test]
    fn records_are_tiled_along_the_sequence() {
        let (path, data) = file(3, "tiled");
        let r = RealInputs::load(&path, &[]).unwrap();
        assert_eq!(r.heads.len(), 2);
        assert_eq!(r.heads[0].label, "L0.H0.B0");
        let [q, k, v] = r.tiled(1, 7, 2, 2).unwrap();
        // Row i of the benchmark is row i mod 3 of the record; q is scaled by √2 · 0.5.
        let mul = (2f64.sqrt() * 0.5) as f32;
        for i in 0..7 {
            for j in 0..2 {
                assert_eq!(q[i * 2 + j], data[0][(i % 3) * 2 + j] * mul);
                assert_eq!(k[i * 2 + j], data[1][(i % 3) * 2 + j]);
                assert_eq!(v[i * 2 + j], data[2][(i % 3) * 2 + j]);
            }
        }
        // A shape whose D differs from the record's is refused.
        assert!(r.tiled(2, 4, 2, 2).is_err(), "head 1 has D = 3");
        assert!(RealInputs::load(&path, &["L9.H0.B0".into()]).is_err());
    }

    #[test]
    fn joined_heads_add_their_scaled_logits() {
        let (path, data) = file(2, "joined");
        let r = RealInputs::load(&path, &["L0.H0.B0+L1.H1.B0".into()]).unwrap();
        let h = &r.heads[0];
        assert_eq!((h.d, h.dv), (5, 5));
        let [q, k, _] = r.tiled(1, 2, 5, 5).unwrap();
        let scale = 1.0 / 5f64.sqrt();
        for i in 0..2 {
            for j in 0..2 {
                let joined: f64 =
                    (0..5).map(|c| f64::from(q[i * 5 + c]) * f64::from(k[j * 5 + c])).sum::<f64>()
                        * scale;
                let a: f64 = (0..2)
                    .map(|c| f64::from(data[0][i * 2 + c]) * f64::from(data[1][j * 2 + c]))
                    .sum::<f64>()
                    * 0.5;
                let b: f64 = (0..3)
                    .map(|c| f64::from(data[3][i * 3 + c]) * f64::from(data[4][j * 3 + c]))
                    .sum::<f64>()
                    * 0.25;
                assert!((joined - (a + b)).abs() <= 1e-5 * (a + b).abs(), "{joined} vs {}", a + b);
            }
        }
    }
}
