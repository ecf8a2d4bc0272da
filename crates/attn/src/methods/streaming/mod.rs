//! StreamingLLM attention: attention sinks plus a causal sliding window (spec §1.7); see
//! `README.md` in this folder.
//!
//! - [`reference`](mod@reference): the element-wise definition, plain loops in f64.
//! - fast path ([`Streaming`] under [`crate::methods::pattern::Fast`]): the band through
//!   `sdpa-flash` with a window mask, the sinks through the sparse kernel as columns, the two
//!   merged by log-sum-exp (spec §0.4.2).

pub mod reference;

use crate::dispatch::{Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::Result;
use crate::mask::{Mask, MaskKind};
use crate::memory::Scratch;
use crate::methods::pattern::{is_causal, positive, unknown, Exec, SparseConfig};
use crate::methods::sdpa::flash;
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::merge::merge_lse_into;
use crate::primitives::simd::Level;
use crate::primitives::sparse::{kernel, BlockList, HeadList};
use crate::problem::Problem;

/// Query rows per block of the sink pass.
const BM: usize = 64;

/// `streaming`: query `i` sees keys `j ≤ p_i` with `j < sink` or `p_i − j < window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    /// Attention-sink tokens at the start (StreamingLLM: 4).
    pub sink: usize,
    /// Most recent keys each query sees, itself included.
    pub window: usize,
}

impl Streaming {
    /// The defaults: 4 sinks (StreamingLLM) and a window of 1024 keys [library choice:
    /// StreamingLLM's cache class defaults to 512 recent tokens, its demos to 2000].
    pub const DEFAULT: Streaming = Streaming { sink: 4, window: 1024 };

    /// The band mask `j ≤ p_i`, `p_i − j < window` of `params`.
    fn band(&self, params: &Resolved) -> Resolved {
        let mut r = params.clone();
        r.mask = Mask::And(vec![Mask::Causal, Mask::sliding_window(self.window)]);
        r
    }

    /// The sink pass: keys `j < sink` with `j ≤ p_i − window` (outside the band), expressed as a
    /// causal mask whose query positions are shifted back by `window`. The sinks are one key
    /// block `[0, sink)` per query block, read in place from the packed keys (as gathered
    /// columns, the same keys were copied again for every query block).
    fn sinks(&self, p: &Problem, params: &Resolved) -> Result<(Resolved, BlockList)> {
        let mut r = params.clone();
        r.geometry.q_offset -= self.window as i64;
        let sink = self.sink.min(p.s_kv);
        let block: &[u32] = if sink > 0 { &[0] } else { &[] };
        let heads = (0..p.b * p.h)
            .map(|_| {
                let mut hl = HeadList::new();
                for _ in 0..p.s_q.div_ceil(BM) {
                    hl.push(block, &[]);
                }
                hl
            })
            .collect();
        Ok((r, BlockList::new(BM, sink.max(1), p.s_q, p.s_kv, heads)?))
    }
}

impl Default for Streaming {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SparseConfig for Streaming {
    const NAME: &'static str = "streaming";
    const REFERENCE_NAME: &'static str = "streaming-reference";
    const FAMILY: &'static str = "streaming";
    const DESCRIPTION: &'static str =
        "StreamingLLM: attention sinks + causal sliding window (band via flash, sinks via the sparse kernel, LSE merge)";
    // Causal only; non-causal calls also get a Reason below that says why.
    const MASKS: &'static [MaskKind] = &[MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "sink",
                value: self.sink.to_string(),
                doc: "sink tokens at the start every query sees (StreamingLLM: 4)",
            },
            ParamInfo {
                name: "window",
                value: self.window.to_string(),
                doc: "recent keys each query sees, itself included (default 1024)",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "sink" => self.sink = crate::dispatch::parse_param(Self::NAME, key, value)?,
            "window" => self.window = positive(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, _: &Problem, params: &Params) -> Vec<Reason> {
        if is_causal(&params.mask) {
            Vec::new()
        } else {
            vec![Reason::Other(
                "streaming needs the causal mask (sinks + a causal window, spec §1.7)".into(),
            )]
        }
    }

    fn forward(
        &self,
        exec: Exec,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        if exec == Exec::Reference {
            let pairs = reference::forward(self, p, inputs, params, out);
            return Ok(Stats::pairs(pairs));
        }
        let band = self.band(params);
        flash::forward_at(
            Level::current(),
            p,
            inputs,
            &band,
            par,
            OutputMut { o: out.o, lse: out.lse },
        );
        let (sink_params, pattern) = self.sinks(p, params)?;
        // Pooled (already mapped) buffers: the kernel writes every row of both.
        let mut o2 = Scratch::take(p.out_len());
        let mut lse2 = Scratch::take(p.lse_len());
        let sink_pairs = kernel::forward(
            p,
            inputs,
            &sink_params,
            &pattern,
            par,
            OutputMut { o: &mut o2, lse: &mut lse2 },
        );
        merge_lse_into(out.o, out.lse, &o2, &lse2)?;
        Ok(Stats::pairs(Stats::exact(&band).computed_pairs + sink_pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        match exec {
            Exec::Reference => 8 * (p.s_kv + p.d_v),
            Exec::Fast => {
                let flash = flash::scratch_bytes(p, par);
                flash.max(kernel::scratch_bytes(p, BM, par)) + 4 * (p.out_len() + p.lse_len())
            }
        }
    }
}
