//! Wall-clock time in unix milliseconds: the one place the autoscaler reads the clock, so the
//! planner stays pure and the store's timestamps agree with each other.

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
