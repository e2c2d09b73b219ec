//! `RunStore`: runs, steps, paging, restarts.

use raccordo_core::{NewRun, RunStatus, StepRecord, StepStatus};
use serde_json::json;

use crate::Backend;

fn run(id: &str, kind: &str, at: i64) -> NewRun {
    NewRun {
        id: id.into(),
        kind: kind.into(),
        trigger: json!({ "ticket": id }),
        started_at_ms: at,
    }
}

fn step(index: u32, status: StepStatus) -> StepRecord {
    StepRecord {
        index,
        name: format!("step{index}"),
        status,
        input: json!({ "i": index }),
        output: (status == StepStatus::Succeeded).then(|| json!({ "o": index })),
        error: None,
        attempts: 1,
        started_at_ms: 10,
        finished_at_ms: Some(20),
        tokens: Some(42),
        cost: Some(0.0042),
    }
}

pub async fn runs_steps_and_paging(backend: &dyn Backend) {
    let opened = backend.open().await;
    let r = opened.stores.runs.clone();
    for (i, kind) in ["triage", "enrich", "triage"].iter().enumerate() {
        assert!(
            r.create_run(run(&format!("run_{i}"), kind, i as i64))
                .await
                .unwrap()
        );
    }
    assert!(
        !r.create_run(run("run_0", "triage", 9)).await.unwrap(),
        "an id is created once"
    );
    assert!(
        r.record_step("run_0", step(0, StepStatus::Running))
            .await
            .unwrap()
    );
    assert!(
        r.record_step("run_0", step(0, StepStatus::Succeeded))
            .await
            .unwrap(),
        "recorded again as it progresses"
    );
    assert!(
        r.record_step("run_0", step(1, StepStatus::Failed))
            .await
            .unwrap()
    );
    assert!(
        !r.record_step("run_x", step(0, StepStatus::Running))
            .await
            .unwrap()
    );
    assert!(r.finish_run("run_0", RunStatus::Failed, 30).await.unwrap());
    assert!(
        !r.finish_run("run_0", RunStatus::Succeeded, 31)
            .await
            .unwrap(),
        "ends once"
    );
    let got = r.run("run_0").await.unwrap().unwrap();
    assert_eq!(got.summary.status, RunStatus::Failed);
    assert_eq!(got.summary.finished_at_ms, Some(30));
    assert_eq!(got.trigger, json!({ "ticket": "run_0" }));
    assert_eq!(got.steps.len(), 2);
    assert_eq!(got.steps[0].status, StepStatus::Succeeded);
    assert_eq!(got.steps[0].output, Some(json!({ "o": 0 })));
    let ids =
        |runs: Vec<raccordo_core::RunSummary>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(r.list_runs(None, None, 10).await.unwrap()),
        ["run_2", "run_1", "run_0"],
        "newest first"
    );
    assert_eq!(
        ids(r.list_runs(Some("triage"), None, 10).await.unwrap()),
        ["run_2", "run_0"]
    );
    assert_eq!(
        ids(r.list_runs(None, Some("run_2"), 1).await.unwrap()),
        ["run_1"],
        "paging"
    );
    assert_eq!(r.run("nope").await.unwrap(), None);
}

pub async fn runs_survive_a_restart(backend: &dyn Backend) {
    let opened = backend.open().await;
    opened
        .stores
        .runs
        .create_run(run("run_a", "triage", 1))
        .await
        .unwrap();
    opened
        .stores
        .runs
        .record_step("run_a", step(0, StepStatus::Succeeded))
        .await
        .unwrap();
    opened.close().await;
    let opened = backend.open().await;
    let got = opened.stores.runs.run("run_a").await.unwrap().unwrap();
    assert_eq!(
        (got.summary.status, got.steps.len()),
        (RunStatus::Running, 1)
    );
}

pub async fn retention_removes_ended_runs_with_their_steps(backend: &dyn Backend) {
    let opened = backend.open().await;
    let r = opened.stores.runs.clone();
    for (id, at) in [("old_done", 100), ("old_running", 100), ("new_done", 5_000)] {
        assert!(r.create_run(run(id, "flow", at)).await.unwrap());
        assert!(
            r.record_step(id, step(0, StepStatus::Succeeded))
                .await
                .unwrap()
        );
    }
    assert!(
        r.finish_run("old_done", RunStatus::Succeeded, 200)
            .await
            .unwrap()
    );
    assert!(
        r.finish_run("new_done", RunStatus::Succeeded, 6_000)
            .await
            .unwrap()
    );

    assert_eq!(
        r.purge_runs(1_000).await.unwrap(),
        1,
        "only the run that ended before"
    );
    assert!(r.run("old_done").await.unwrap().is_none());
    assert!(
        r.run("old_running").await.unwrap().is_some(),
        "a run still going stays"
    );
    assert_eq!(r.run("new_done").await.unwrap().unwrap().steps.len(), 1);
    assert_eq!(r.purge_runs(1_000).await.unwrap(), 0, "idempotent");
    // The removed run's id is free again, without leftover steps.
    assert!(r.create_run(run("old_done", "flow", 7_000)).await.unwrap());
    assert!(r.run("old_done").await.unwrap().unwrap().steps.is_empty());
    opened.close().await;
}
