//! The offline provider: Italian and English sentiment and intent by lexicon, so that the
//! demo and the tests need no model and no key. It answers the JSON a classification prompt
//! asks for — `{"sentiment", "intent", "language", "confidence"}` — and is measured on the
//! labelled set shipped in `data/support-messages.jsonl` (see `docs/flows.md`).
//!
//! How it decides, briefly: words are matched against stems (so `rimborso`, `rimborsi` and
//! `rimborsare` all hit `rimbors`); a negation up to three words before a sentiment word
//! turns it around (`non funziona`, `not happy`); the intent with the most weight wins, and a
//! message that names none is a request for `information`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sentiment {
    Positive,
    Neutral,
    Negative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Invoices, charges, refunds, payments.
    Billing,
    /// Something does not work: errors, access, bugs, delivery of the service.
    Technical,
    /// Ending a contract, a subscription, an account.
    Cancellation,
    /// Prices, quotes, buying more, upgrades, demos.
    Purchase,
    /// Anything else: questions, requests for information.
    Information,
}

impl Sentiment {
    pub const ALL: [Sentiment; 3] = [Sentiment::Positive, Sentiment::Neutral, Sentiment::Negative];
    pub fn as_str(self) -> &'static str {
        match self {
            Sentiment::Positive => "positive",
            Sentiment::Neutral => "neutral",
            Sentiment::Negative => "negative",
        }
    }
}

impl Intent {
    pub const ALL: [Intent; 5] = [
        Intent::Billing,
        Intent::Technical,
        Intent::Cancellation,
        Intent::Purchase,
        Intent::Information,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Billing => "billing",
            Intent::Technical => "technical",
            Intent::Cancellation => "cancellation",
            Intent::Purchase => "purchase",
            Intent::Information => "information",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub sentiment: Sentiment,
    pub intent: Intent,
    /// `it` or `en`.
    pub language: &'static str,
    /// How clear the evidence was, 0–1 (share of the winning intent's weight, damped when
    /// little matched).
    pub confidence: f64,
}

/// Sentiment stems and their weight (a stem matches any word it begins).
const SENTIMENT: &[(&str, f64)] = &[
    // Italian, positive
    ("grazie", 1.0),
    ("ottim", 1.5),
    ("perfett", 1.5),
    ("eccellent", 1.5),
    ("soddisfatt", 1.5),
    ("content", 1.0),
    ("felic", 1.5),
    ("bravissim", 1.5),
    ("bravi", 1.0),
    ("gentil", 1.0),
    ("veloc", 0.5),
    ("rapid", 0.5),
    ("risolt", 1.0),
    ("funziona", 1.0),
    ("fantastic", 1.5),
    ("complimenti", 1.5),
    ("utile", 1.0),
    ("apprezz", 1.0),
    ("consiglio", 0.5),
    ("ben", 0.5),
    ("meraviglios", 1.5),
    ("top", 1.0),
    ("super", 1.0),
    ("impeccabil", 1.5),
    ("professional", 1.0),
    // Italian, negative
    ("problem", -1.0),
    ("errore", -1.0),
    ("errori", -1.0),
    ("pessim", -2.0),
    ("terribil", -2.0),
    ("vergogn", -2.0),
    ("inaccettabil", -2.0),
    ("delus", -1.5),
    ("arrabbiat", -2.0),
    ("furios", -2.0),
    ("lent", -1.0),
    ("bloccat", -1.5),
    ("rott", -1.5),
    ("guast", -1.5),
    ("sbagliat", -1.5),
    ("disastr", -2.0),
    ("scandal", -2.0),
    ("assurd", -1.5),
    ("reclam", -1.5),
    ("lamentel", -1.5),
    ("insoddisfatt", -1.5),
    ("ancora", -0.5),
    ("nessuna risposta", -1.5),
    ("mai", -0.5),
    ("addebit", -0.5),
    ("doppio", -0.5),
    ("impossibil", -1.5),
    ("peggior", -2.0),
    ("schifo", -2.0),
    ("stanc", -1.0),
    ("attesa", -0.5),
    ("aspett", -0.5),
    ("crash", -1.5),
    ("perso", -1.0),
    ("scadent", -1.5),
    ("truff", -2.0),
    ("ridicol", -1.5),
    ("purtroppo", -1.0),
    ("difett", -1.5),
    // English, positive
    ("thank", 1.0),
    ("great", 1.5),
    ("excellent", 1.5),
    ("perfect", 1.5),
    ("love", 1.5),
    ("happy", 1.5),
    ("awesome", 1.5),
    ("amazing", 1.5),
    ("helpful", 1.0),
    ("quick", 0.5),
    ("fast", 0.5),
    ("solved", 1.0),
    ("resolved", 1.0),
    ("works", 1.0),
    ("working", 0.5),
    ("appreciat", 1.0),
    ("pleased", 1.5),
    ("satisfied", 1.5),
    ("fantastic", 1.5),
    ("good", 1.0),
    ("nice", 1.0),
    ("recommend", 1.0),
    ("wonderful", 1.5),
    ("smooth", 1.0),
    ("kudos", 1.5),
    // English, negative
    ("problem", -1.0),
    ("issue", -0.5),
    ("error", -1.0),
    ("terrible", -2.0),
    ("awful", -2.0),
    ("worst", -2.0),
    ("unacceptable", -2.0),
    ("disappoint", -1.5),
    ("angry", -2.0),
    ("furious", -2.0),
    ("frustrat", -1.5),
    ("slow", -1.0),
    ("broken", -1.5),
    ("fail", -1.0),
    ("wrong", -1.5),
    ("disaster", -2.0),
    ("ridiculous", -1.5),
    ("complain", -1.5),
    ("unhappy", -1.5),
    ("still", -0.5),
    ("never", -0.5),
    ("impossible", -1.5),
    ("crash", -1.5),
    ("stuck", -1.5),
    ("bad", -1.5),
    ("poor", -1.5),
    ("useless", -2.0),
    ("scam", -2.0),
    ("lost", -1.0),
    ("unfortunately", -1.0),
    ("overcharg", -1.5),
    ("twice", -0.5),
    ("waiting", -0.5),
    ("horrible", -2.0),
    ("annoy", -1.5),
];

/// Intent stems and their weight.
const INTENT: &[(Intent, &str, f64)] = &[
    (Intent::Billing, "fattur", 2.0),
    (Intent::Billing, "rimbors", 2.0),
    (Intent::Billing, "pagament", 2.0),
    (Intent::Billing, "addebit", 2.0),
    (Intent::Billing, "pagat", 1.0),
    (Intent::Billing, "carta di credito", 2.0),
    (Intent::Billing, "iban", 1.5),
    (Intent::Billing, "bonific", 1.5),
    (Intent::Billing, "importo", 1.5),
    (Intent::Billing, "iva", 1.5),
    (Intent::Billing, "ricevuta", 1.5),
    (Intent::Billing, "invoice", 2.0),
    (Intent::Billing, "refund", 2.0),
    (Intent::Billing, "payment", 2.0),
    (Intent::Billing, "charg", 2.0),
    (Intent::Billing, "billing", 2.0),
    (Intent::Billing, "billed", 2.0),
    (Intent::Billing, "paid", 1.0),
    (Intent::Billing, "credit card", 2.0),
    (Intent::Billing, "receipt", 1.5),
    (Intent::Billing, "vat", 1.5),
    (Intent::Billing, "bonifico", 1.5),
    (Intent::Billing, "amount", 1.0),
    (Intent::Billing, "soldi", 1.0),
    (Intent::Billing, "money", 1.0),
    (Intent::Billing, "costo addebitato", 2.0),
    (Intent::Technical, "funzion", 1.5),
    (Intent::Technical, "errore", 2.0),
    (Intent::Technical, "accesso", 1.5),
    (Intent::Technical, "accedere", 2.0),
    (Intent::Technical, "login", 2.0),
    (Intent::Technical, "password", 2.0),
    (Intent::Technical, "bloccat", 1.5),
    (Intent::Technical, "app", 1.0),
    (Intent::Technical, "sito", 1.0),
    (Intent::Technical, "caric", 1.0),
    (Intent::Technical, "crash", 2.0),
    (Intent::Technical, "bug", 2.0),
    (Intent::Technical, "aggiornament", 1.0),
    (Intent::Technical, "installa", 1.5),
    (Intent::Technical, "configura", 1.5),
    (Intent::Technical, "sincronizz", 1.5),
    (Intent::Technical, "connession", 1.5),
    (Intent::Technical, "server", 1.5),
    (Intent::Technical, "api", 1.5),
    (Intent::Technical, "integrazion", 1.5),
    (Intent::Technical, "schermat", 1.5),
    (Intent::Technical, "esportazion", 1.0),
    (Intent::Technical, "lent", 1.0),
    (Intent::Technical, "rott", 1.0),
    (Intent::Technical, "work", 1.0),
    (Intent::Technical, "error", 2.0),
    (Intent::Technical, "log in", 2.0),
    (Intent::Technical, "sign in", 2.0),
    (Intent::Technical, "broken", 1.5),
    (Intent::Technical, "loading", 1.5),
    (Intent::Technical, "load", 1.0),
    (Intent::Technical, "sync", 1.5),
    (Intent::Technical, "install", 1.5),
    (Intent::Technical, "configur", 1.5),
    (Intent::Technical, "connect", 1.5),
    (Intent::Technical, "timeout", 2.0),
    (Intent::Technical, "outage", 2.0),
    (Intent::Technical, "down", 1.0),
    (Intent::Technical, "reset", 1.5),
    (Intent::Technical, "export", 1.0),
    (Intent::Technical, "import", 1.0),
    (Intent::Technical, "stuck", 1.0),
    (Intent::Technical, "screen", 1.0),
    (Intent::Technical, "webhook", 1.5),
    (Intent::Technical, "integration", 1.5),
    (Intent::Cancellation, "disdett", 3.0),
    (Intent::Cancellation, "disdir", 3.0),
    (Intent::Cancellation, "annull", 2.0),
    (Intent::Cancellation, "cancellare l", 2.0),
    (Intent::Cancellation, "cancellazion", 2.0),
    (Intent::Cancellation, "recess", 3.0),
    (Intent::Cancellation, "chiudere l", 2.0),
    (Intent::Cancellation, "chiusura", 2.0),
    (Intent::Cancellation, "interromp", 2.0),
    (Intent::Cancellation, "non rinnov", 3.0),
    (Intent::Cancellation, "rinnovo automatico", 1.5),
    (Intent::Cancellation, "cancel", 3.0),
    (Intent::Cancellation, "unsubscrib", 3.0),
    (Intent::Cancellation, "terminate", 2.0),
    (Intent::Cancellation, "close my account", 3.0),
    (Intent::Cancellation, "delete my account", 3.0),
    (Intent::Cancellation, "stop my", 2.0),
    (Intent::Cancellation, "end my", 2.0),
    (Intent::Cancellation, "auto-renew", 1.5),
    (Intent::Cancellation, "not renew", 3.0),
    (Intent::Cancellation, "leave", 1.0),
    (Intent::Cancellation, "switching to", 2.0),
    (Intent::Cancellation, "passare a un altro", 2.0),
    (Intent::Purchase, "prezz", 2.0),
    (Intent::Purchase, "preventiv", 3.0),
    (Intent::Purchase, "acquist", 2.5),
    (Intent::Purchase, "comprare", 2.5),
    (Intent::Purchase, "offert", 2.0),
    (Intent::Purchase, "listino", 2.5),
    (Intent::Purchase, "sconto", 2.0),
    (Intent::Purchase, "licenz", 1.5),
    (Intent::Purchase, "piano", 1.0),
    (Intent::Purchase, "upgrade", 2.5),
    (Intent::Purchase, "demo", 2.5),
    (Intent::Purchase, "prova gratuita", 2.5),
    (Intent::Purchase, "ordin", 1.0),
    (Intent::Purchase, "price", 2.0),
    (Intent::Purchase, "pricing", 2.5),
    (Intent::Purchase, "quote", 3.0),
    (Intent::Purchase, "buy", 2.5),
    (Intent::Purchase, "purchas", 2.5),
    (Intent::Purchase, "discount", 2.0),
    (Intent::Purchase, "license", 1.5),
    (Intent::Purchase, "seats", 2.0),
    (Intent::Purchase, "postazion", 2.0),
    (Intent::Purchase, "trial", 2.0),
    (Intent::Purchase, "enterprise", 1.5),
    (Intent::Purchase, "plan", 1.0),
    (Intent::Purchase, "order", 1.0),
    (Intent::Purchase, "costa", 2.0),
    (Intent::Purchase, "cost", 1.5),
    (Intent::Purchase, "add more users", 2.5),
    (Intent::Purchase, "utenti in più", 2.5),
    (Intent::Information, "informazion", 1.0),
    (Intent::Information, "orari", 1.5),
    (Intent::Information, "come si", 1.0),
    (Intent::Information, "dove", 0.5),
    (Intent::Information, "documentazion", 1.5),
    (Intent::Information, "how do", 1.0),
    (Intent::Information, "where", 0.5),
    (Intent::Information, "hours", 1.5),
    (Intent::Information, "documentation", 1.5),
    (Intent::Information, "information", 1.0),
    (Intent::Information, "gdpr", 1.5),
    (Intent::Information, "privacy", 1.5),
];

/// Words that turn the next sentiment word around.
const NEGATIONS: &[&str] = &[
    "non", "né", "nessun", "nessuna", "senza", "not", "no", "never", "without", "dont", "doesnt",
    "didnt", "isnt", "wasnt", "cant", "cannot", "wont", "arent", "havent", "nor",
];

const ITALIAN: &[&str] = &[
    "il",
    "la",
    "le",
    "gli",
    "di",
    "che",
    "non",
    "per",
    "un",
    "una",
    "sono",
    "è",
    "ho",
    "mi",
    "del",
    "della",
    "con",
    "ma",
    "come",
    "vostro",
    "vostra",
    "nostro",
    "buongiorno",
    "salve",
    "grazie",
    "ancora",
    "anche",
    "questo",
    "da",
    "al",
    "alla",
    "nel",
    "ci",
    "si",
    "ordine",
];
const ENGLISH: &[&str] = &[
    "the", "and", "is", "to", "of", "my", "i", "it", "you", "your", "for", "not", "with", "this",
    "was", "have", "has", "on", "but", "hello", "hi", "please", "thanks", "can", "we", "our",
    "are", "be", "an", "a",
];

/// Lower-cased words, with apostrophes dropped (`don't` → `dont`, `l'ordine` → `l ordine`).
fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = lower.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() || c == '-' {
            word.push(c);
        } else if (c == '\'' || c == '’')
            && chars.get(i + 1) == Some(&'t')
            && !word.is_empty()
            && chars.get(i + 2).is_none_or(|c| !c.is_alphanumeric())
        {
            // English contractions stay one word: `don't` → `dont`.
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Whether `stem` (one word, or several) occurs at word `i`.
fn matches_at(words: &[String], i: usize, stem: &str) -> bool {
    let mut parts = stem.split(' ').peekable();
    let mut j = i;
    while let Some(part) = parts.next() {
        let Some(w) = words.get(j) else { return false };
        let last = parts.peek().is_none();
        // Whole words for short stems and inside phrases, prefixes otherwise.
        let ok = if last && part.len() >= 4 {
            w.starts_with(part)
        } else {
            w == part
        };
        if !ok {
            return false;
        }
        j += 1;
    }
    true
}

pub fn classify(text: &str) -> Classification {
    let words = words(text);
    let (mut it, mut en) = (0, 0);
    for w in &words {
        it += ITALIAN.contains(&w.as_str()) as i32;
        en += ENGLISH.contains(&w.as_str()) as i32;
    }
    let language = if it >= en { "it" } else { "en" };

    let mut score = 0.0;
    let mut intents = [0.0f64; 5];
    for i in 0..words.len() {
        // The longest sentiment stem that matches here counts once.
        if let Some(&(_, weight)) = SENTIMENT
            .iter()
            .filter(|(stem, _)| matches_at(&words, i, stem))
            .max_by_key(|(stem, _)| stem.len())
        {
            let negated = words[i.saturating_sub(3)..i]
                .iter()
                .any(|w| NEGATIONS.contains(&w.as_str()));
            score += if negated { -weight } else { weight };
        }
        for (intent, stem, weight) in INTENT {
            if matches_at(&words, i, stem) {
                intents[*intent as usize] += weight;
            }
        }
    }
    let sentiment = if score >= 1.0 {
        Sentiment::Positive
    } else if score <= -1.0 {
        Sentiment::Negative
    } else {
        Sentiment::Neutral
    };
    // Cancelling outweighs the money or the fault behind it; information is the fallback.
    let (best, weight) = Intent::ALL
        .iter()
        .map(|i| (*i, intents[*i as usize]))
        .filter(|(i, _)| *i != Intent::Information)
        .fold(
            (
                Intent::Information,
                intents[Intent::Information as usize].max(1.0),
            ),
            |acc, x| {
                if x.1 > acc.1 { x } else { acc }
            },
        );
    let total: f64 = intents.iter().sum::<f64>().max(1.0);
    let confidence = ((weight / total) * (1.0 - (-weight / 2.0).exp())).clamp(0.0, 1.0);
    Classification {
        sentiment,
        intent: best,
        language,
        confidence: (confidence * 100.0).round() / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_turns_sentiment_around_in_both_languages() {
        assert_eq!(
            classify("Il prodotto funziona benissimo, grazie!").sentiment,
            Sentiment::Positive
        );
        assert_eq!(
            classify("L'app non funziona da tre giorni").sentiment,
            Sentiment::Negative
        );
        assert_eq!(
            classify("I'm not happy with the service").sentiment,
            Sentiment::Negative
        );
        assert_eq!(
            classify("The export works great now, thanks").sentiment,
            Sentiment::Positive
        );
    }

    #[test]
    fn intents_and_languages() {
        let c = classify("Vorrei disdire l'abbonamento dal prossimo mese");
        assert_eq!((c.intent, c.language), (Intent::Cancellation, "it"));
        let c = classify("I was charged twice on my last invoice");
        assert_eq!((c.intent, c.language), (Intent::Billing, "en"));
        assert_eq!(
            classify("Can you send me a quote for 20 seats?").intent,
            Intent::Purchase
        );
        assert_eq!(
            classify("Non riesco ad accedere, la password è sbagliata").intent,
            Intent::Technical
        );
        assert_eq!(
            classify("Quali sono gli orari dell'assistenza?").intent,
            Intent::Information
        );
    }

    #[test]
    fn any_text_gets_an_answer() {
        for text in ["", "   ", "!!!", "ñ’’'t", "a'", "'t"] {
            let c = classify(text);
            assert!((0.0..=1.0).contains(&c.confidence));
        }
    }
}

/// Precision and recall of one class on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: &'static str,
    /// Messages labelled with the class.
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
}

/// How the classifier does on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub messages: usize,
    pub sentiment_accuracy: f64,
    pub intent_accuracy: f64,
    pub sentiment: Vec<ClassScore>,
    pub intent: Vec<ClassScore>,
}

/// One labelled message (a line of `data/support-messages.jsonl`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Labelled {
    pub text: String,
    pub sentiment: String,
    pub intent: String,
}

/// Classifies every message and scores the answers against the labels.
pub fn evaluate(set: &[Labelled]) -> Evaluation {
    let answers: Vec<Classification> = set.iter().map(|m| classify(&m.text)).collect();
    let score =
        |class: &'static str, label: &dyn Fn(usize) -> bool, said: &dyn Fn(usize) -> bool| {
            let (mut tp, mut labelled, mut predicted) = (0, 0, 0);
            for i in 0..set.len() {
                tp += (label(i) && said(i)) as usize;
                labelled += label(i) as usize;
                predicted += said(i) as usize;
            }
            ClassScore {
                class,
                support: labelled,
                precision: if predicted == 0 {
                    0.0
                } else {
                    tp as f64 / predicted as f64
                },
                recall: if labelled == 0 {
                    0.0
                } else {
                    tp as f64 / labelled as f64
                },
            }
        };
    let share = |hits: usize| {
        if set.is_empty() {
            0.0
        } else {
            hits as f64 / set.len() as f64
        }
    };
    Evaluation {
        messages: set.len(),
        sentiment_accuracy: share(
            (0..set.len())
                .filter(|&i| set[i].sentiment == answers[i].sentiment.as_str())
                .count(),
        ),
        intent_accuracy: share(
            (0..set.len())
                .filter(|&i| set[i].intent == answers[i].intent.as_str())
                .count(),
        ),
        sentiment: Sentiment::ALL
            .iter()
            .map(|s| {
                score(s.as_str(), &|i| set[i].sentiment == s.as_str(), &|i| {
                    answers[i].sentiment == *s
                })
            })
            .collect(),
        intent: Intent::ALL
            .iter()
            .map(|c| {
                score(c.as_str(), &|i| set[i].intent == c.as_str(), &|i| {
                    answers[i].intent == *c
                })
            })
            .collect(),
    }
}

impl Evaluation {
    /// The scores as a Markdown table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} messages; sentiment accuracy {:.1} %, intent accuracy {:.1} %\n\n| task | class | messages | precision | recall |\n| --- | --- | --- | --- | --- |\n",
            self.messages,
            self.sentiment_accuracy * 100.0,
            self.intent_accuracy * 100.0
        );
        for (task, scores) in [("sentiment", &self.sentiment), ("intent", &self.intent)] {
            for s in scores {
                out.push_str(&format!(
                    "| {task} | {} | {} | {:.2} | {:.2} |\n",
                    s.class, s.support, s.precision, s.recall
                ));
            }
        }
        out
    }
}
