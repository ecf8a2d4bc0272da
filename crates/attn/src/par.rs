//! How much parallelism a kernel may use.

/// Parallelism handed to every kernel. Kernels never spawn threads of their own: they split work
/// into at most [`Par::threads`] jobs on the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Par {
    /// Run on the calling thread.
    Seq,
    /// Every worker of the current rayon pool.
    #[default]
    All,
    /// Up to `n` workers of the current rayon pool (`0` means all; capped at the pool size).
    Rayon(usize),
}

impl Par {
    /// Number of concurrent jobs a kernel should create (≥ 1).
    pub fn threads(self) -> usize {
        match self {
            Par::Seq => 1,
            Par::All | Par::Rayon(0) => rayon::current_num_threads().max(1),
            // More workers than the pool has threads would only multiply scratch.
            Par::Rayon(n) => n.min(rayon::current_num_threads().max(1)),
        }
    }

    /// `Par::Rayon(n)`, or `Par::Seq` for `n == 1`.
    pub fn with_threads(n: usize) -> Self {
        if n == 1 {
            Par::Seq
        } else {
            Par::Rayon(n)
        }
    }

    /// Runs `f(worker)` for `worker in 0..jobs`, concurrently unless `Seq` or `jobs == 1`.
    pub fn run(self, jobs: usize, f: impl Fn(usize) + Sync) {
        if jobs <= 1 || self == Par::Seq {
            (0..jobs).for_each(f);
        } else {
            rayon::scope(|s| {
                for w in 1..jobs {
                    let f = &f;
                    s.spawn(move |_| f(w));
                }
                f(0);
            });
        }
    }
}
