//! Where the models hand attention to the `attn` crate: one call per layer (or per head where the
//! plan mixes methods), the time spent in it, and the capture hooks.
//!
//! Activations stay in the models' own layout `[B·S, H·D]` (token-major); the calls read them
//! through strided `[B, H, S, D]` views, so nothing is copied on the way in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use attn::{Mask, Params, Prefs, TensorRef};

use crate::capture::{Capture, Captured};
use crate::error::{ModelError, Result};
use crate::plan::{AttentionPlan, Choice};

/// What a forward pass is run with: the attention plan, threads, accumulated statistics and the
/// capture request. One per forward (or per sequence of forwards whose totals you want).
#[derive(Debug)]
pub struct RunCtx {
    /// Which method runs in which (layer, head).
    pub plan: AttentionPlan,
    /// Threads for attention calls and dense parts.
    pub threads: usize,
    /// Totals over the calls made so far.
    pub stats: AttnStats,
    /// What to record, if anything.
    pub capture: Option<Capture>,
    /// The attention calls' output and log-sum-exp buffers, kept from call to call: a fresh
    /// output per call faulted its pages in inside the timed call (about 7 ms of a 9-head
    /// SmolLM2 call at 8192 tokens), which an engine reusing its buffers does not pay. Every
    /// method writes every element (NaN-poisoned in the conformance suite).
    outputs: (Vec<f32>, Vec<f32>),
}

impl RunCtx {
    /// Exact attention on every worker of the current rayon pool.
    pub fn exact() -> Self {
        Self::new(AttentionPlan::exact())
    }

    /// A plan on every worker of the current rayon pool.
    pub fn new(plan: AttentionPlan) -> Self {
        Self {
            plan,
            threads: rayon::current_num_threads(),
            stats: AttnStats::default(),
            capture: None,
            outputs: (Vec::new(), Vec::new()),
        }
    }

    /// Dense-layer parallelism.
    pub fn dense(&self) -> crate::ops::Threads {
        crate::ops::Threads(self.threads)
    }
}

/// Totals of the attention calls of a [`RunCtx`].
#[derive(Debug, Clone, Default)]
pub struct AttnStats {
    /// Wall time inside attention calls.
    pub time: Duration,
    /// Attention calls made.
    pub calls: usize,
    /// (query, key) pairs the mask allows, summed over heads: what exact attention scores.
    pub allowed_pairs: u64,
    /// (query, key) pairs the methods scored, as they report them (`attn::Stats`), estimation
    /// passes and block expansion included: the cost measure that compares across methods.
    pub computed_pairs: u64,
    /// Per method label: calls and time.
    pub by_method: BTreeMap<String, (usize, Duration)>,
    /// Per layer: time inside its attention calls.
    pub by_layer: BTreeMap<usize, Duration>,
}

impl AttnStats {
    /// Seconds inside attention calls per layer, indexed by layer (0 for a layer that made no
    /// call).
    pub fn layer_seconds(&self) -> Vec<f64> {
        let n = self.by_layer.keys().next_back().map_or(0, |&l| l + 1);
        let mut v = vec![0.0; n];
        for (&l, t) in &self.by_layer {
            v[l] = t.as_secs_f64();
        }
        v
    }
}

/// One attention of one layer, in the model's layout.
#[derive(Debug, Clone, Copy)]
pub struct AttnInput<'a> {
    /// Layer index (for the plan and captures).
    pub layer: usize,
    /// Sequences in the batch.
    pub batch: usize,
    /// Queries `[B·S_q, H·D]`.
    pub q: &'a [f32],
    /// Keys `[B·S_kv, H_kv·D]`.
    pub k: &'a [f32],
    /// Values `[B·S_kv, H_kv·D_v]`.
    pub v: &'a [f32],
    /// Query rows per sequence.
    pub s_q: usize,
    /// Key rows per sequence.
    pub s_kv: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Query/key head size.
    pub head_dim: usize,
    /// Value head size.
    pub v_dim: usize,
}

fn view<'a>(
    x: &'a [f32],
    batch: usize,
    s: usize,
    heads: usize,
    d: usize,
    head_range: std::ops::Range<usize>,
) -> Result<TensorRef<'a>> {
    let row = heads * d;
    let off = head_range.start * d;
    let n = head_range.len();
    Ok(TensorRef::with_strides(&x[off..], [batch, n, s, d], [s * row, d, row, 1])?)
}

/// Runs the attention of one layer into `out: [B·S_q, H·D_v]`, as the plan says for each head.
///
/// # Errors
/// Whatever the attention call reports (unknown or unsupported method, bad parameters), and
/// [`ModelError::Invalid`] for parameters given to `exact`.
pub fn attention(ctx: &mut RunCtx, a: &AttnInput, params: &Params, out: &mut [f32]) -> Result<()> {
    let AttnInput { layer, batch, s_q, s_kv, heads, kv_heads, head_dim, v_dim, .. } = *a;
    debug_assert_eq!(out.len(), batch * s_q * heads * v_dim);
    let group = heads / kv_heads;
    // Runs of consecutive heads that share a choice, cut at KV-group boundaries only when the
    // choice changes, so a uniform plan is one call.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for h in 1..=heads {
        if h == heads || ctx.plan.choice(layer, h) != ctx.plan.choice(layer, start) {
            runs.push((start, h));
            start = h;
        }
    }
    for (h0, h1) in runs {
        let choice = ctx.plan.choice(layer, h0).clone();
        // A run must cover whole KV groups, else split it into single heads.
        let aligned = h0 % group == 0 && h1 % group == 0;
        let pieces: Vec<(usize, usize)> =
            if aligned { vec![(h0, h1)] } else { (h0..h1).map(|h| (h, h + 1)).collect() };
        for (p0, p1) in pieces {
            let (k0, k1) =
                if aligned { (p0 / group, p1 / group) } else { (p0 / group, p0 / group + 1) };
            let q = view(a.q, batch, s_q, heads, head_dim, p0..p1)?;
            let k = view(a.k, batch, s_kv, kv_heads, head_dim, k0..k1)?;
            let v = view(a.v, batch, s_kv, kv_heads, v_dim, k0..k1)?;
            let mut pp = params.clone();
            if let Some(sl) = &params.alibi_slopes {
                pp.alibi_slopes = Some(sl[p0..p1].to_vec());
            }
            let n = p1 - p0;
            let t = Instant::now();
            match &params.mask {
                // A padded batch for a method that does not take key padding: each sequence
                // alone, unpadded and unmasked (the same attention), padded query rows zero.
                Mask::KeyPadding { lengths }
                    if s_q == s_kv && !choice.is_exact() && !takes_padding(&choice) =>
                {
                    for (b, &len) in lengths.iter().enumerate().take(batch) {
                        let len = len.min(s_q);
                        for h in p0..p1 {
                            for t in len..s_q {
                                let dst = (b * s_q + t) * heads * v_dim + h * v_dim;
                                out[dst..dst + v_dim].fill(0.0);
                            }
                        }
                        if len == 0 {
                            continue;
                        }
                        let qb = view(
                            &a.q[b * s_q * heads * head_dim..],
                            1,
                            len,
                            heads,
                            head_dim,
                            p0..p1,
                        )?;
                        let kb = view(
                            &a.k[b * s_kv * kv_heads * head_dim..],
                            1,
                            len,
                            kv_heads,
                            head_dim,
                            k0..k1,
                        )?;
                        let vb = view(
                            &a.v[b * s_kv * kv_heads * v_dim..],
                            1,
                            len,
                            kv_heads,
                            v_dim,
                            k0..k1,
                        )?;
                        let mut pb = pp.clone();
                        pb.mask = Mask::None;
                        let o = call(ctx, &choice, qb, kb, vb, &pb)?;
                        for (hi, h) in (p0..p1).enumerate() {
                            for t in 0..len {
                                let src = (hi * len + t) * v_dim;
                                let dst = (b * s_q + t) * heads * v_dim + h * v_dim;
                                out[dst..dst + v_dim].copy_from_slice(&o[src..src + v_dim]);
                            }
                        }
                    }
                }
                _ => {
                    let o = call(ctx, &choice, q, k, v, &pp)?;
                    // o: [B, n, S_q, D_v] → out[(b·S_q + t), h·D_v + …]
                    for b in 0..batch {
                        for (hi, h) in (p0..p1).enumerate() {
                            for t in 0..s_q {
                                let src = ((b * n + hi) * s_q + t) * v_dim;
                                let dst = (b * s_q + t) * heads * v_dim + h * v_dim;
                                out[dst..dst + v_dim].copy_from_slice(&o[src..src + v_dim]);
                            }
                        }
                    }
                }
            }
            *ctx.stats.by_layer.entry(layer).or_default() += t.elapsed();
            ctx.stats.allowed_pairs += allowed_pairs(&params.mask, batch, n, s_q, s_kv);
            let wanted = ctx.capture.as_ref().is_some_and(|c| c.wants_layer(layer));
            if wanted {
                record(ctx, layer, p0..p1, group, q, k, v, &pp)?;
            }
        }
    }
    Ok(())
}

/// Whether the method a choice names accepts key-padding masks (unknown names: assume yes, so
/// the call reports the error).
fn takes_padding(choice: &Choice) -> bool {
    attn::registry()
        .get(&choice.method)
        .map_or(true, |m| m.capabilities().masks.contains(&attn::MaskKind::KeyPadding))
}

/// Runs one attention call into the context's reused output buffers and adds its time and pairs
/// to the totals; returns the output `[B, H, S_q, D_v]`.
fn call<'c>(
    ctx: &'c mut RunCtx,
    choice: &Choice,
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    params: &Params,
) -> Result<&'c [f32]> {
    if choice.is_exact() && !choice.params.is_empty() {
        return Err(ModelError::Invalid(format!(
            "`{}`: exact attention takes no parameters (name a method to tune it)",
            choice.label()
        )));
    }
    let prefs = Prefs {
        method: if choice.is_exact() { None } else { Some(choice.label()) },
        par: attn::Par::Rayon(ctx.threads.max(1)),
        ..Prefs::default()
    };
    let inputs = attn::Inputs { q, k, v };
    let t = Instant::now();
    let prepared = attn::prepare(&inputs, params, &prefs)?;
    let p = prepared.problem;
    let (o, lse) = &mut ctx.outputs;
    grow(o, p.out_len(), "attention output")?;
    grow(lse, p.lse_len(), "attention log-sum-exp")?;
    let out = attn::OutputMut { o: &mut o[..p.out_len()], lse: &mut lse[..p.lse_len()] };
    let stats = prepared.run(&inputs, prefs.par, out)?;
    let dt = t.elapsed();
    ctx.stats.time += dt;
    ctx.stats.calls += 1;
    ctx.stats.computed_pairs += stats.computed_pairs;
    let e = ctx.stats.by_method.entry(prepared.selection.chosen.name().to_string()).or_default();
    e.0 += 1;
    e.1 += dt;
    Ok(&ctx.outputs.0[..p.out_len()])
}

/// Lengthens `buf` to at least `n` elements (never shortens it: the next larger call reuses the
/// mapped pages); a failed allocation is a typed error.
fn grow(buf: &mut Vec<f32>, n: usize, what: &str) -> Result<()> {
    if buf.len() < n {
        buf.try_reserve_exact(n - buf.len()).map_err(|_| attn::Error::MemoryBudget {
            op: format!("allocate {what}"),
            needed: 4 * n,
            budget: 0,
        })?;
        buf.resize(n, 0.0);
    }
    Ok(())
}

/// (query, key) pairs a mask allows for `heads` heads of `batch` sequences.
pub fn allowed_pairs(mask: &Mask, batch: usize, heads: usize, s_q: usize, s_kv: usize) -> u64 {
    let per = match mask {
        Mask::None => (s_q * s_kv) as u64,
        Mask::Causal => {
            // Bottom-right aligned: query t sees keys 0..=t + (s_kv − s_q).
            let off = s_kv as i64 - s_q as i64;
            (0..s_q as i64).map(|t| (t + off + 1).clamp(0, s_kv as i64) as u64).sum()
        }
        Mask::Window { left, right } => {
            let off = s_kv as i64 - s_q as i64;
            (0..s_q as i64)
                .map(|t| {
                    let p = t + off;
                    let lo = left.map_or(0, |l| (p - l as i64).max(0));
                    let hi = right.map_or(s_kv as i64 - 1, |r| (p + r as i64).min(s_kv as i64 - 1));
                    (hi - lo + 1).max(0) as u64
                })
                .sum()
        }
        Mask::KeyPadding { lengths } => {
            return lengths.iter().take(batch).map(|&l| (s_q * l.min(s_kv)) as u64).sum::<u64>()
                * heads as u64
        }
        _ => (s_q * s_kv) as u64,
    };
    per * (batch * heads) as u64
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &mut RunCtx,
    layer: usize,
    heads: std::ops::Range<usize>,
    group: usize,
    q: TensorRef,
    k: TensorRef,
    v: TensorRef,
    params: &Params,
) -> Result<()> {
    let Some(cap) = ctx.capture.as_mut() else { return Ok(()) };
    let [batch, _, s_q, d] = q.shape();
    let [_, _, s_kv, dv] = v.shape();
    for (hi, h) in heads.clone().enumerate() {
        if !cap.wants(layer, h) {
            continue;
        }
        let kvh = h / group - heads.start / group; // the KV head's index inside the view
        for b in 0..batch {
            let rows = |t: &TensorRef, head: usize, s: usize, dd: usize| {
                let mut m = vec![0f32; s * dd];
                for i in 0..s {
                    t.read_row(b, head, i, 1.0, &mut m[i * dd..(i + 1) * dd]);
                }
                m
            };
            let qm = rows(&q, hi, s_q, d);
            let km = rows(&k, kvh, s_kv, d);
            let vm = rows(&v, kvh, s_kv, dv);
            let mut params = params.clone();
            if let Some(sl) = &params.alibi_slopes {
                params.alibi_slopes = Some(vec![sl[hi]]);
            }
            if let Mask::KeyPadding { lengths } = &params.mask {
                params.mask = Mask::KeyPadding { lengths: vec![lengths[b]] };
            }
            cap.push(Captured {
                layer,
                head: h,
                kv_head: h / group,
                batch_index: b,
                s_q,
                s_kv,
                head_dim: d,
                v_dim: dv,
                q: qm,
                k: km,
                v: vm,
                params,
            })?;
        }
    }
    Ok(())
}
