//! Memory facts from the operating system (Linux `/proc`; `None` elsewhere).

/// Bytes the OS reports as available for new allocations (`MemAvailable`).
pub fn available_bytes() -> Option<usize> {
    meminfo_kib("MemAvailable:").map(|k| k * 1024)
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<usize> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size of this process (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<usize> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// Resets the peak RSS counter to the current RSS (Linux ≥ 4.0: writes `5` to
/// `/proc/self/clear_refs`). Returns false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kib(key: &str) -> Option<usize> {
    field_kib(&std::fs::read_to_string("/proc/self/status").ok()?, key)
}

fn meminfo_kib(key: &str) -> Option<usize> {
    field_kib(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

fn field_kib(text: &str, key: &str) -> Option<usize> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// Most buffers the scratch pool keeps between calls.
const POOL_MAX: usize = 16;

static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// An f32 scratch buffer taken from the process-wide pool and given back when dropped, so that
/// repeated calls reuse memory that is already mapped instead of faulting fresh pages in (that
/// cost 4 % of a 1024-token call). Contents on arrival are unspecified (stale values, never
/// uninitialised): kernels write before they read.
#[derive(Debug)]
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    /// A buffer of exactly `n` elements.
    pub(crate) fn take(n: usize) -> Self {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut buf = match best {
            Some(i) => pool.swap_remove(i),
            None => pool.pop().unwrap_or_default(),
        };
        drop(pool);
        if buf.len() < n {
            buf.resize(n, 0.0);
        } else {
            buf.truncate(n);
        }
        Scratch(buf)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(std::mem::take(&mut self.0));
        }
    }
}

/// Frees the scratch memory kept between calls (kernels keep their largest buffers — packed K/V,
/// per-thread tiles — for reuse by the next call).
pub fn release_scratch() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Bytes currently held by the scratch pool.
pub fn pooled_scratch_bytes() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|b| b.capacity() * 4).sum()
}
