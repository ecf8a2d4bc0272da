//! Real Q/K/V for `attn bench --qkv`: heads recorded by `attn capture` (a `.safetensors` file with
//! `L{layer}.H{head}.B{b}.{q,k,v}` tensors `[S, D]` and each record's scale in the metadata),
//! tiled along the sequence to the benchmark's length.
//!
//! - **Tiling**: row `i` of a benchmark head is row `i mod S_rec` of the record, for queries,
//!   keys and values alike. The positional encoding (RoPE) was applied at capture time, so a
//!   tiled sequence repeats the same relative structure every `S_rec` rows: local bands, sinks
//!   at each tile start, the same columns. Benchmarks must say so.
//!   - `repeat` (default): the rows as recorded. A query in tile m scores the same-offset key of
//!     every earlier tile exactly as its own: each tile is an exact copy at every distance that
//!     is a multiple of `S_rec`.
//!   - `rope`: the queries and keys of tile `m` are rotated by `m·S_rec` more positions with the
//!     record's RoPE (pairs and frequencies from the capture metadata). RoPE rotates a row at
//!     position `p` by `p·θ_i` per pair, and rotations add, so row `i` of the record becomes the
//!     row a model would have produced at position `i + m·S_rec` from the same pre-RoPE vector:
//!     within a tile the logits are the record's, across tiles each pair's rotation matches its
//!     true distance. (Still a repeat of the same content, not a longer text.)
//!   - Neither is a long text. Past `S_rec`, queries meet key distances (`rope`) or rotations of
//!     later positions (`repeat`) that the recording never had; past a model's trained length
//!     that drives RoPE heads out of their habits (SmolLM2 tiled to 64k with `rope`: 76.5 % of
//!     the mass of rows past 8192 sits at distances ≥ 8192). `attn bench --recall` reports that
//!     share (`mass_beyond_recorded`) for every approximate method on tiled inputs.
//! - **Joined heads**: `L3.H0.B0+L3.H1.B0` concatenates two records along `D` (a `D = 128` head
//!   from two `D = 64` heads); the queries are multiplied by `√(D_joined) · scale_rec`, so that
//!   the benchmark's default scale `1/√D_joined` gives logits equal to the **sum** of the parts'
//!   logits as the model scaled them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use attn_models::capture::RopeMeta;
use attn_models::ops::Rope;

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
    /// The RoPE of each joined part: `(first feature, features, rotation)`; `None` where the
    /// file has no RoPE metadata for the part.
    pub rope: Vec<(usize, usize, Option<Rope>)>,
}

/// How records are extended past their length (`attn bench --qkv-tiling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiling {
    /// The rows as recorded.
    Repeat,
    /// Queries and keys of tile `m` rotated by `m·S_rec` positions with the record's RoPE.
    Rope,
}

/// Every head a benchmark case cycles through.
#[derive(Debug, Clone)]
pub struct RealInputs {
    pub file: PathBuf,
    pub heads: Vec<RealHead>,
    pub tiling: Tiling,
}

impl RealInputs {
    /// Reads `file`; `select` lists record keys (`L3.H0.B0`, joined with `+`), empty = every
    /// record in the file.
    ///
    /// With [`Tiling::Rope`] every record needs RoPE metadata (files from `attn capture` carry
    /// it).
    pub fn load(file: &Path, select: &[String], tiling: Tiling) -> Result<Self> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("{}: not a valid .safetensors file ({e})", file.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a valid .safetensors file ({e})", file.display()))?;
        let records: BTreeMap<String, serde_json::Value> = meta
            .metadata()
            .as_ref()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        let scales: BTreeMap<String, f64> = records
            .iter()
            .filter_map(|(k, j)| Some((k.clone(), j.get("scale")?.as_f64()?)))
            .collect();
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
                let rope = match records.get(*p).and_then(|j| j.get("rope")) {
                    None => None,
                    Some(j) => Some(RopeMeta::from_json(j).ok_or_else(|| {
                        anyhow!("{}: {p}: unreadable `rope` metadata {j}", file.display())
                    })?),
                };
                if tiling == Tiling::Rope {
                    match &rope {
                        None => bail!(
                            "{}: {p} has no RoPE metadata, so --qkv-tiling rope cannot move it \
                             (re-capture it with this version of `attn capture`)",
                            file.display()
                        ),
                        Some(r) if r.rot_dim > q.2 => bail!(
                            "{}: {p}: RoPE rotates {} features of a {}-feature head",
                            file.display(),
                            r.rot_dim,
                            q.2
                        ),
                        Some(_) => {}
                    }
                }
                recs.push((q, k, v, scale, rope));
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
                rope: Vec::new(),
            };
            let (mut off, mut offv) = (0, 0);
            for (q, k, v, scale, rope) in &recs {
                h.rope.push((off, q.2, rope.as_ref().map(RopeMeta::rope)));
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
        Ok(Self { file: file.to_path_buf(), heads, tiling })
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
            // Tile m's queries and keys turn by m·S_rec more positions (one table per tile and
            // part: rotations add).
            if self.tiling == Tiling::Rope {
                for tile in 1..s.div_ceil(r.s) {
                    let rows = hi * s + tile * r.s..hi * s + ((tile + 1) * r.s).min(s);
                    for (off, width, rope) in &r.rope {
                        let Some(rope) = rope else { continue };
                        let table = rope.table(tile * r.s, 1);
                        for t in out[..2].iter_mut() {
                            for row in t[rows.start * d..rows.end * d].chunks_mut(d) {
                                table.apply(&mut row[*off..off + width], 1, *width);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// One line for the report.
    /// Rows of each record (the tile length).
    pub fn recorded_rows(&self) -> usize {
        self.heads[0].s
    }

    pub fn describe(&self) -> String {
        let labels: Vec<&str> = self.heads.iter().map(|h| h.label.as_str()).collect();
        format!(
            "real inputs from {} ({} recorded rows, tiled{}): {}",
            self.file.display(),
            self.heads[0].s,
            if self.tiling == Tiling::Rope { " with RoPE at the true positions" } else { "" },
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
        let r = RealInputs::load(&path, &[], Tiling::Repeat).unwrap();
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
        assert!(RealInputs::load(&path, &["L9.H0.B0".into()], Tiling::Repeat).is_err());
    }

    /// Rotates `x` (half-split pairs over `inv_freq`, or interleaved) to position `pos`, in f64.
    fn rope_at(x: &[f64], inv_freq: &[f64], interleaved: bool, pos: usize) -> Vec<f64> {
        let mut y = x.to_vec();
        let half = inv_freq.len();
        for (i, f) in inv_freq.iter().enumerate() {
            let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (s, c) = (pos as f64 * f).sin_cos();
            y[a] = x[a] * c - x[b] * s;
            y[b] = x[a] * s + x[b] * c;
        }
        y
    }

    #[test]
    fn rope_tiling_puts_every_row_at_its_true_position() {
        // Pre-RoPE rows x_i (D = 6, 4 rotated features + 2 plain); the record holds them rotated
        // to positions 0..3, as a model would. Tiled with `rope`, benchmark row P must be
        // x_{P mod 3} rotated to P, for queries and keys, in both pair styles; values unchanged.
        let (s, d) = (3usize, 6usize);
        let inv = [0.9f64, 0.013];
        for (interleaved, pairs) in [(false, "half"), (true, "interleaved")] {
            let dir =
                std::env::temp_dir().join(format!("attn-real-{}-rope-{pairs}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("qkv.safetensors");
            let pre = |t: usize, i: usize| -> Vec<f64> {
                (0..d).map(|c| ((t * 31 + i * 7 + c * 3) % 11) as f64 - 5.0).collect()
            };
            let rec = |t: usize| -> Vec<f32> {
                (0..s)
                    .flat_map(|i| {
                        let x = pre(t, i);
                        let mut y = if t < 2 {
                            rope_at(&x[..4], &inv, interleaved, i)
                        } else {
                            x[..4].to_vec()
                        };
                        y.extend_from_slice(&x[4..]);
                        y.into_iter().map(|v| v as f32)
                    })
                    .collect()
            };
            let data: Vec<Vec<f32>> = (0..3).map(rec).collect();
            let bytes: Vec<Vec<u8>> =
                data.iter().map(|x| x.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
            let views: Vec<(String, TensorView)> = ["q", "k", "v"]
                .iter()
                .zip(&bytes)
                .map(|(t, b)| {
                    let v = TensorView::new(safetensors::Dtype::F32, vec![s, d], b).unwrap();
                    (format!("L2.H0.B0.{t}"), v)
                })
                .collect();
            let rope = format!(
                "{{\"scale\":{},\"rope\":{{\"pairs\":\"{pairs}\",\"rot_dim\":4,\"inv_freq\":[0.9,0.013]}}}}",
                1.0 / (d as f64).sqrt()
            );
            let meta: std::collections::HashMap<String, String> =
                [("L2.H0.B0".to_string(), rope)].into_iter().collect();
            safetensors::serialize_to_file(views, &Some(meta), &path).unwrap();

            let r = RealInputs::load(&path, &[], Tiling::Rope).unwrap();
            let out = r.tiled(1, 8, d, d).unwrap();
            for pos in 0..8 {
                for (t, o) in out.iter().enumerate() {
                    let x = pre(t, pos % s);
                    let mut want = if t < 2 {
                        rope_at(&x[..4], &inv, interleaved, pos)
                    } else {
                        x[..4].to_vec()
                    };
                    want.extend_from_slice(&x[4..]);
                    for c in 0..d {
                        let got = f64::from(o[pos * d + c]);
                        assert!(
                            (got - want[c]).abs() < 1e-4,
                            "{pairs} t{t} pos {pos} c{c}: {got} vs {}",
                            want[c]
                        );
                    }
                }
            }
            // `repeat` leaves the rows as recorded.
            let rep =
                RealInputs::load(&path, &[], Tiling::Repeat).unwrap().tiled(1, 8, d, d).unwrap();
            assert_eq!(rep[1][6 * d..7 * d], data[1][..d]);
        }
        // A file without RoPE metadata cannot be moved.
        let (path, _) = file(3, "norope");
        let e = RealInputs::load(&path, &[], Tiling::Rope).unwrap_err().to_string();
        assert!(e.contains("no RoPE metadata"), "{e}");
    }

    #[test]
    fn joined_heads_add_their_scaled_logits() {
        let (path, data) = file(2, "joined");
        let r = RealInputs::load(&path, &["L0.H0.B0+L1.H1.B0".into()], Tiling::Repeat).unwrap();
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
