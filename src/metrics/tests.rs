use super::*;

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn an_empty_registry_still_says_up_and_describes_every_family() {
    let text = Metrics::new().render();
    assert!(text.contains("\ndropdeploy_up 1\n"), "{text}");
    for (name, kind) in [
        ("dropdeploy_up", "gauge"),
        ("dropdeploy_deployments_total", "counter"),
        ("dropdeploy_retries_total", "counter"),
        ("dropdeploy_upload_bytes_total", "counter"),
        ("dropdeploy_queue_depth", "gauge"),
        ("dropdeploy_last_success_timestamp_seconds", "gauge"),
        ("dropdeploy_deployment_duration_seconds", "histogram"),
        ("dropdeploy_upload_duration_seconds", "histogram"),
        ("dropdeploy_build_duration_seconds", "histogram"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn deployments_are_counted_by_app_and_outcome() {
    let m = Metrics::new();
    m.deployment_finished("my-app", "succeeded", 100);
    m.deployment_finished("my-app", "succeeded", 90);
    m.deployment_finished("my-app", "failed", 120);
    m.deployment_finished("other", "superseded", 130);
    let text = m.render();
    let l = lines(&text);
    assert!(l.contains(&r#"dropdeploy_deployments_total{app="my-app",outcome="succeeded"} 2"#));
    assert!(l.contains(&r#"dropdeploy_deployments_total{app="my-app",outcome="failed"} 1"#));
    assert!(l.contains(&r#"dropdeploy_deployments_total{app="other",outcome="superseded"} 1"#));
    // The last success never moves back, and only successes set it.
    assert!(l.contains(&r#"dropdeploy_last_success_timestamp_seconds{app="my-app"} 100"#));
    assert!(!text.contains(r#"dropdeploy_last_success_timestamp_seconds{app="other"}"#));
}

#[test]
fn retries_bytes_and_queue_depth() {
    let m = Metrics::new();
    m.retry("a", "upload");
    m.retry("a", "upload");
    m.retry("a", "create_source");
    m.upload_bytes("a", 1000);
    m.upload_bytes("a", 24);
    m.set_queue_depth("a", 1, 0);
    m.set_queue_depth("a", 1, 3);
    let text = m.render();
    let l = lines(&text);
    assert!(l.contains(&r#"dropdeploy_retries_total{app="a",step="upload"} 2"#));
    assert!(l.contains(&r#"dropdeploy_retries_total{app="a",step="create_source"} 1"#));
    assert!(l.contains(&r#"dropdeploy_upload_bytes_total{app="a"} 1024"#));
    assert!(l.contains(&r#"dropdeploy_queue_depth{app="a",state="in_flight"} 1"#));
    assert!(l.contains(&r#"dropdeploy_queue_depth{app="a",state="pending"} 3"#));
}

#[test]
fn registered_apps_start_at_zero_and_keep_their_counts() {
    let m = Metrics::new();
    m.deployment_finished("a", "failed", 1);
    m.register_app("a");
    m.register_app("a");
    let text = m.render();
    let l = lines(&text);
    assert!(l.contains(&r#"dropdeploy_deployments_total{app="a",outcome="succeeded"} 0"#));
    assert!(l.contains(&r#"dropdeploy_deployments_total{app="a",outcome="failed"} 1"#));
    assert!(l.contains(&r#"dropdeploy_deployments_total{app="a",outcome="superseded"} 0"#));
    assert!(l.contains(&r#"dropdeploy_upload_bytes_total{app="a"} 0"#));
    assert!(l.contains(&r#"dropdeploy_queue_depth{app="a",state="pending"} 0"#));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
    assert_eq!(escape_label_value("line\nbreak"), r"line\nbreak");
    assert_eq!(escape_label_value("été"), "été");
    let m = Metrics::new();
    m.retry("x\"y", "a\\b\nc");
    let text = m.render();
    assert!(
        text.contains(r#"dropdeploy_retries_total{app="x\"y",step="a\\b\nc"} 1"#),
        "{text}"
    );
    // Every sample stays on one line.
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("dropdeploy_"))
    );
}

#[test]
fn history_entries_are_counted_by_their_outcome() {
    let m = Metrics::new();
    let entry = HistoryEntry {
        app: "a".into(),
        outcome: Outcome::Succeeded,
        ..HistoryEntry::default()
    };
    m.record_outcome(&entry);
    m.record_outcome(&HistoryEntry::default()); // unknown: not counted
    let text = m.render();
    assert!(text.contains(r#"dropdeploy_deployments_total{app="a",outcome="succeeded"} 1"#));
    assert!(!text.contains("outcome=\"unknown\""));
    assert!(text.contains(r#"dropdeploy_last_success_timestamp_seconds{app="a"} "#));
}

#[test]
fn the_observer_counts_retries_and_uploads_and_forwards_everything() {
    use crate::deploy::scalingo::api::ApiError;
    use crate::queue::spool::{JobState, Payload};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl Observer for Count {
        fn event(&self, _: &Job, _: &Event<'_>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let inner = Arc::new(Count(AtomicUsize::new(0)));
    let m = Metrics::new();
    let observer = MetricsObserver::new(m.clone(), inner.clone());
    let job = Job {
        id: "j1".into(),
        app: "my-app".into(),
        git_ref: "my-app-1".into(),
        git_ref_given: false,
        payload: Payload::Url {
            url: "https://x.example/a.tar.gz".into(),
        },
        created_at: 0,
        seq: None,
        started_at: None,
        failed_attempts: 0,
        aborted_retries: 0,
        source_renewals: 0,
        check: None,
        state: JobState::Queued,
    };
    let error = ApiError::Timeout {
        what: "upload",
        url: "https://storage.example".into(),
        waited: Duration::from_secs(1),
        limit: Duration::from_secs(1),
    };
    observer.event(
        &job,
        &Event::Retrying {
            step: Step::Upload,
            error: &error,
            delay: Duration::from_secs(1),
            failures: 1,
        },
    );
    observer.event(
        &job,
        &Event::Uploaded {
            bytes: 4096,
            elapsed: Duration::from_millis(5),
        },
    );
    observer.event(&job, &Event::Finished);
    assert_eq!(inner.0.load(Ordering::SeqCst), 3);
    let text = m.render();
    assert!(text.contains(r#"dropdeploy_retries_total{app="my-app",step="upload"} 1"#));
    assert!(text.contains(r#"dropdeploy_upload_bytes_total{app="my-app"} 4096"#));
}

/// Every histogram series in `text`: its `_bucket` values in order, with their `le`.
/// Checks that they are cumulative and end with `+Inf` equal to `_count`.
fn histograms(text: &str) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut series: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("_bucket{")) {
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        let (head, le) = name_labels.rsplit_once(",le=\"").unwrap();
        let le = le.trim_end_matches("\"}").to_string();
        series
            .entry(head.replace("_bucket", ""))
            .or_default()
            .push((le, value.parse().unwrap()));
    }
    for (head, buckets) in &series {
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{head}: not cumulative: {buckets:?}"
        );
        let (last_le, last) = buckets.last().unwrap();
        assert_eq!(last_le, "+Inf", "{head}");
        let (name, labels) = head.split_once('{').unwrap();
        let count = format!("{name}_count{{{labels}}} {last}");
        let count = count.replace("{}", "");
        assert!(
            text.lines().any(|l| l == count),
            "{head}: no `{count}` in\n{text}"
        );
    }
    series
}

#[test]
fn a_histogram_has_cumulative_buckets_a_sum_and_a_count() {
    let m = Metrics::new();
    for ms in [500, 3000, 3000, 4_000_000] {
        m.deployment_duration("my-app", "succeeded", Duration::from_millis(ms));
    }
    let text = m.render();
    let l = lines(&text);
    let name = "dropdeploy_deployment_duration_seconds";
    assert!(l.contains(&"# TYPE dropdeploy_deployment_duration_seconds histogram"));
    let expected = [
        ("1", 1),
        ("5", 3),
        ("15", 3),
        ("30", 3),
        ("60", 3),
        ("120", 3),
        ("300", 3),
        ("600", 3),
        ("1200", 3),
        ("1800", 3),
        ("3600", 3),
        ("+Inf", 4),
    ];
    for (le, n) in expected {
        let line = format!(r#"{name}_bucket{{app="my-app",outcome="succeeded",le="{le}"}} {n}"#);
        assert!(l.contains(&line.as_str()), "{line} in\n{text}");
    }
    assert!(l.contains(
        &r#"dropdeploy_deployment_duration_seconds_sum{app="my-app",outcome="succeeded"} 4006.5"#
    ));
    assert!(l.contains(
        &r#"dropdeploy_deployment_duration_seconds_count{app="my-app",outcome="succeeded"} 4"#
    ));
    // The bucket lines come in ascending order of `le`, then `_sum`, then `_count`.
    let at = |needle: &str| text.find(needle).unwrap();
    assert!(at(r#"le="1"}"#) < at(r#"le="5"}"#));
    assert!(at(r#"le="3600"}"#) < at(r#"le="+Inf"}"#));
    assert!(at(r#"le="+Inf"}"#) < at(&format!("{name}_sum")));
    assert!(at(&format!("{name}_sum")) < at(&format!("{name}_count")));
    assert_eq!(histograms(&text).len(), 1);
}

#[test]
fn a_value_on_a_bound_counts_in_its_bucket() {
    let mut h = Histogram::new(UPLOAD_BUCKETS);
    h.observe(0.1);
    h.observe(0.1000001);
    h.observe(1e9);
    let mut out = String::new();
    h.render(&mut out, "x", &[]);
    let l = lines(&out);
    assert!(l.contains(&r#"x_bucket{le="0.1"} 1"#), "{out}");
    assert!(l.contains(&r#"x_bucket{le="0.5"} 2"#), "{out}");
    assert!(l.contains(&r#"x_bucket{le="600"} 2"#), "{out}");
    assert!(l.contains(&r#"x_bucket{le="+Inf"} 3"#), "{out}");
    assert!(l.contains(&"x_count 3"), "{out}");
    assert_eq!(h.count(), 3);
}

#[test]
fn outcomes_are_timed_by_their_duration_and_refused_archives_not() {
    let m = Metrics::new();
    m.register_app("a");
    m.record_outcome(&HistoryEntry {
        app: "a".into(),
        git_ref: Some("a-1".into()),
        outcome: Outcome::Failed,
        duration_ms: 90_000,
        ..HistoryEntry::default()
    });
    m.record_outcome(&HistoryEntry {
        app: "a".into(),
        outcome: Outcome::Failed,
        ..HistoryEntry::default()
    });
    let text = m.render();
    let l = lines(&text);
    let failed = r#"dropdeploy_deployment_duration_seconds_bucket{app="a",outcome="failed","#;
    assert!(
        l.contains(&format!(r#"{failed}le="60"}} 0"#).as_str()),
        "{text}"
    );
    assert!(
        l.contains(&format!(r#"{failed}le="120"}} 1"#).as_str()),
        "{text}"
    );
    assert!(
        l.contains(&r#"dropdeploy_deployment_duration_seconds_count{app="a",outcome="failed"} 1"#)
    );
    assert!(
        l.contains(&r#"dropdeploy_deployment_duration_seconds_sum{app="a",outcome="failed"} 90"#)
    );
    assert!(text.contains(r#"dropdeploy_deployments_total{app="a",outcome="failed"} 2"#));
    // A registered app's histograms exist at 0, for each outcome.
    assert!(l.contains(
        &r#"dropdeploy_deployment_duration_seconds_count{app="a",outcome="succeeded"} 0"#
    ));
    assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_count{app="a"} 0"#));
    assert!(l.contains(&r#"dropdeploy_build_duration_seconds_bucket{app="a",le="+Inf"} 0"#));
    assert_eq!(histograms(&text).len(), 5);
}

fn job(id: &str) -> Job {
    use crate::queue::spool::{JobState, Payload};
    Job {
        id: id.into(),
        app: "my-app".into(),
        git_ref: "my-app-1".into(),
        git_ref_given: false,
        payload: Payload::Url {
            url: "https://x.example/a.tar.gz".into(),
        },
        created_at: 0,
        seq: None,
        started_at: None,
        failed_attempts: 0,
        aborted_retries: 0,
        source_renewals: 0,
        check: None,
        state: JobState::Queued,
    }
}

#[test]
fn the_observer_times_uploads_and_builds() {
    struct Quiet;
    impl Observer for Quiet {
        fn event(&self, _: &Job, _: &Event<'_>) {}
    }
    let m = Metrics::new();
    let observer = MetricsObserver::new(m.clone(), Arc::new(Quiet));
    let (one, two) = (job("j1"), job("j2"));
    observer.event(
        &one,
        &Event::Uploaded {
            bytes: 10,
            elapsed: Duration::from_millis(700),
        },
    );
    // j1: one deployment followed to its end.
    observer.event(&one, &Event::DeploymentCreated { id: "d-1" });
    observer.event(&one, &Event::Status { status: "building" });
    observer.event(&one, &Event::Status { status: "success" });
    observer.event(&one, &Event::Finished);
    // j2: adopted after a restart, aborted, posted again, then finished.
    observer.event(&two, &Event::DeploymentAdopted { id: "d-2" });
    observer.event(&two, &Event::Status { status: "aborted" });
    observer.event(&two, &Event::DeploymentCreated { id: "d-3" });
    observer.event(&two, &Event::Finished);
    // A job that ends without a deployment is no build.
    observer.event(&job("j3"), &Event::Finished);

    let text = m.render();
    let l = lines(&text);
    assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_bucket{app="my-app",le="0.5"} 0"#));
    assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_bucket{app="my-app",le="1"} 1"#));
    assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_sum{app="my-app"} 0.7"#));
    assert!(
        l.contains(&r#"dropdeploy_build_duration_seconds_count{app="my-app"} 3"#),
        "{text}"
    );
    assert!(
        observer.builds.lock().unwrap().is_empty(),
        "no build left behind"
    );
    assert_eq!(histograms(&text).len(), 2);
}

#[test]
fn step_labels_are_the_history_names() {
    assert_eq!(step_label(Step::CreateSource), "create_source");
    assert_eq!(step_label(Step::Upload), "upload");
    assert_eq!(step_label(Step::Follow), "follow");
}
