//! Deployment statuses: which are still running, which mean success, which mean failure.

/// Where a deployment stands, from its `status` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `queued`, `building`, `pushing`, `starting`: keep following.
    Running,
    /// `success`, the only success.
    Succeeded,
    /// `build-error`, `crashed-error`, `timeout-error`, `hook-error`, `aborted`, and any status
    /// this client does not know: the deployment is over and failed.
    Failed,
}

/// Classifies a deployment status. Unknown statuses count as a finished failure, as the
/// platform documentation asks, so a new status never leaves a job following forever.
///
/// An empty status is a field the answer lacked (decoded leniently), not a status: the
/// deployment is followed on, within `deploy_timeout`.
pub fn phase(status: &str) -> Phase {
    match status {
        "queued" | "building" | "pushing" | "starting" | "" => Phase::Running,
        "success" => Phase::Succeeded,
        _ => Phase::Failed,
    }
}

/// A short explanation of a failure status, for people reading a log or a reason file.
pub fn explain(status: &str) -> &'static str {
    match status {
        "build-error" => "the build failed",
        "crashed-error" => "the application crashed at start",
        "timeout-error" => "the application did not bind $PORT within 60 s",
        "hook-error" => "the postdeploy hook failed",
        "aborted" => "the deployment was aborted",
        "success" => "deployed",
        _ => "the deployment ended with a status this version does not know",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_phases() {
        for s in ["queued", "building", "pushing", "starting", ""] {
            assert_eq!(phase(s), Phase::Running, "{s}");
        }
        assert_eq!(phase("success"), Phase::Succeeded);
        for s in [
            "build-error",
            "crashed-error",
            "timeout-error",
            "hook-error",
            "aborted",
            "something-new",
        ] {
            assert_eq!(phase(s), Phase::Failed, "{s}");
        }
    }
}
