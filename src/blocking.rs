//! Blocking work (fsync, tar, gzip, directory walks) runs on tokio's blocking threads, never on
//! the runtime's workers. [`run`] does that and folds the two ways it can fail (the work's own
//! error, or the task panicking) into one error, so callers match one `Result`.

/// Why blocking work did not give its value.
#[derive(Debug)]
pub enum BlockingError<E> {
    /// The work returned an error.
    Failed(E),
    /// The work panicked (or the runtime is shutting down).
    Crashed(tokio::task::JoinError),
}

impl<E: std::fmt::Display> std::fmt::Display for BlockingError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockingError::Failed(e) => e.fmt(f),
            BlockingError::Crashed(e) => write!(f, "the task crashed: {e}"),
        }
    }
}

/// Runs `work` on a blocking thread and waits for it.
pub async fn run<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, BlockingError<E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(BlockingError::Failed(e)),
        Err(e) => Err(BlockingError::Crashed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_an_error_and_a_panic_each_come_back_as_one_result() {
        assert_eq!(run(|| Ok::<_, String>(7)).await.unwrap(), 7);
        let failed = run(|| Err::<u8, _>("disk full".to_string())).await;
        assert!(matches!(&failed, Err(BlockingError::Failed(e)) if e == "disk full"));
        let crashed = run(|| -> Result<u8, String> { panic!("boom") }).await;
        assert!(
            crashed
                .unwrap_err()
                .to_string()
                .starts_with("the task crashed")
        );
    }
}
