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
