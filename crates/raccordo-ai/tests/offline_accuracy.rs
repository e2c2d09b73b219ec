//! The offline classifier on the labelled set the project ships: the table printed here is
//! the one in `docs/flows.md` (`cargo test -p raccordo-ai --test offline_accuracy -- --nocapture`).

use raccordo_ai::offline::{Labelled, evaluate};

fn labelled_set() -> Vec<Labelled> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/support-messages.jsonl"
    ))
    .expect("the labelled set ships with the crate");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("each line is a labelled message"))
        .collect()
}

#[test]
fn the_labelled_set_is_large_and_bilingual() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/support-messages.jsonl"
    ))
    .unwrap();
    let langs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(langs.len() >= 200);
    let italian = langs.iter().filter(|v| v["lang"] == "it").count();
    assert!(
        italian >= 100 && langs.len() - italian >= 100,
        "{italian} Italian of {}",
        langs.len()
    );
}

#[test]
fn accuracy_on_the_labelled_set_stays_above_its_documented_floor() {
    let eval = evaluate(&labelled_set());
    println!("{}", eval.table());
    // Floors a little under what docs/flows.md reports, so that a lexicon change that makes
    // the classifier worse fails here instead of going unnoticed.
    assert!(
        eval.sentiment_accuracy >= 0.75,
        "sentiment {:.3}",
        eval.sentiment_accuracy
    );
    assert!(
        eval.intent_accuracy >= 0.80,
        "intent {:.3}",
        eval.intent_accuracy
    );
    for s in eval.sentiment.iter().chain(&eval.intent) {
        assert!(s.recall >= 0.5 && s.precision >= 0.5, "{s:?}");
    }
}
