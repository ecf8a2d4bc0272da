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
