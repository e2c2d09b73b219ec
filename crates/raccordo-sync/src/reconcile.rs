//! Reconciliation: do both CRMs agree? Reads every contact and company on both sides,
//! compares the pairs field by field (canonical values, one checksum per record and side),
//! and lists what is missing, unlinked or different — the integrity report, as JSON and as
//! an HTML page. It names fields and record ids, never field values.
//!
//! [`compare`] is pure; [`Reconciler::run`] reads the CRMs and the id mappings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use raccordo_core::IdMappings;
use raccordo_core::crm::{CrmRecord, ObjectKind, System};
use raccordo_crm::{CrmError, HubSpotClient, ZohoClient};
use serde::Serialize;

use crate::config::{ObjectSync, SyncConfig};
use crate::fields::Canonical;
use crate::jobs::record_ref;
use crate::plan::{canonical, is_hot};

/// A pair whose mapped fields differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    pub hubspot_id: String,
    pub zoho_id: String,
    /// The mapping's field names (HubSpot's) that differ.
    pub fields: Vec<String>,
    pub hubspot_checksum: String,
    pub zoho_checksum: String,
}

/// What reconciliation found for one kind of record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ObjectReport {
    pub hubspot_records: u64,
    pub zoho_records: u64,
    /// Linked pairs whose two records exist.
    pub pairs: u64,
    pub pairs_equal: u64,
    pub different: Vec<Difference>,
    /// HubSpot records with no counterpart in Zoho (every one should have one).
    pub missing_in_zoho: Vec<String>,
    /// Hot Zoho records with no counterpart in HubSpot.
    pub missing_in_hubspot: Vec<String>,
    /// Records that match a record on the other side by the match field but are not linked
    /// (the next sync of either links them).
    pub unlinked_matches: Vec<(String, String)>,
    /// Mappings whose record on one side no longer exists.
    pub dangling: Vec<(String, String)>,
}

impl ObjectReport {
    /// Problems found (0: the two CRMs agree).
    pub fn problems(&self) -> u64 {
        (self.different.len()
            + self.missing_in_zoho.len()
            + self.missing_in_hubspot.len()
            + self.unlinked_matches.len()
            + self.dangling.len()) as u64
    }
}

/// One day's conversions counted by the hub and by a CRM.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConversionCount {
    pub name: String,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub hub: u64,
    pub crm: u64,
    pub agrees: bool,
}

/// The integrity report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub generated_at_ms: i64,
    pub contacts: ObjectReport,
    pub companies: ObjectReport,
    /// The daily conversion checks (`[[sync.conversion_checks]]`).
    pub conversions: Vec<ConversionCount>,
}

impl Report {
    pub fn problems(&self) -> u64 {
        self.contacts.problems()
            + self.companies.problems()
            + self.conversions.iter().filter(|c| !c.agrees).count() as u64
    }
}

/// Whether two counts agree within `tolerance` (a share of the hub's count).
pub fn counts_agree(hub: u64, crm: u64, tolerance: f64) -> bool {
    let allowed = (hub as f64 * tolerance.max(0.0)).floor() as u64;
    hub.abs_diff(crm) <= allowed
}

fn checksum(values: &BTreeMap<String, Canonical>) -> String {
    let text = serde_json::to_string(values).unwrap_or_default();
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares the records of both sides, given the links (HubSpot id → Zoho id).
pub fn compare(
    object: &ObjectSync,
    hubspot: &[CrmRecord],
    zoho: &[CrmRecord],
    links: &HashMap<String, String>,
) -> ObjectReport {
    let mut report = ObjectReport {
        hubspot_records: hubspot.len() as u64,
        zoho_records: zoho.len() as u64,
        ..ObjectReport::default()
    };
    let mut ignore = Vec::new();
    let h_values: HashMap<&str, BTreeMap<String, Canonical>> = hubspot
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                canonical(object, System::HubSpot, r, &mut ignore),
            )
        })
        .collect();
    let z_values: HashMap<&str, BTreeMap<String, Canonical>> = zoho
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                canonical(object, System::Zoho, r, &mut ignore),
            )
        })
        .collect();
    let key = object
        .match_field()
        .map(|f| f.hubspot.clone())
        .unwrap_or_default();
    let z_by_key: HashMap<String, &str> = z_values
        .iter()
        .filter_map(|(id, v)| Some((v.get(&key)?.clone()?, *id)))
        .collect();
    let mut linked_zoho = std::collections::HashSet::new();
    let mut sorted_links: Vec<(&String, &String)> = links.iter().collect();
    sorted_links.sort();
    for (h, z) in sorted_links {
        linked_zoho.insert(z.as_str());
        match (h_values.get(h.as_str()), z_values.get(z.as_str())) {
            (Some(hv), Some(zv)) => {
                report.pairs += 1;
                let fields: Vec<String> = object
                    .fields
                    .iter()
                    .map(|f| &f.hubspot)
                    .filter(|f| hv.get(*f) != zv.get(*f))
                    .cloned()
                    .collect();
                if fields.is_empty() {
                    report.pairs_equal += 1;
                } else {
                    report.different.push(Difference {
                        hubspot_id: h.clone(),
                        zoho_id: z.clone(),
                        fields,
                        hubspot_checksum: checksum(hv),
                        zoho_checksum: checksum(zv),
                    });
                }
            }
            _ => report.dangling.push((h.clone(), z.clone())),
        }
    }
    let mut h_ids: Vec<&&str> = h_values.keys().collect();
    h_ids.sort();
    for h in h_ids {
        if links.contains_key(*h) {
            continue;
        }
        let matched = h_values[*h]
            .get(&key)
            .and_then(|v| v.clone())
            .and_then(|v| z_by_key.get(&v).copied());
        match matched {
            Some(z) => {
                linked_zoho.insert(z);
                report.unlinked_matches.push((h.to_string(), z.to_string()));
            }
            None => report.missing_in_zoho.push(h.to_string()),
        }
    }
    let mut z_ids: Vec<&&str> = z_values.keys().collect();
    z_ids.sort();
    for z in z_ids {
        if !linked_zoho.contains(*z) && is_hot(object, &z_values[*z]) {
            report.missing_in_hubspot.push(z.to_string());
        }
    }
    report
}

/// The report as a self-contained HTML page.
pub fn html(report: &Report) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>raccordo · integrity report</title>\
         <style>body{font:14px system-ui,sans-serif;margin:24px;color:#1d2430}table{border-collapse:collapse;margin:8px 0 20px}\
         td,th{border-bottom:1px solid #e3e6eb;padding:4px 10px;text-align:left}.ok{color:#17803d}.bad{color:#b42318}</style></head><body>",
    );
    let at = time::OffsetDateTime::from_unix_timestamp(report.generated_at_ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "<h1>Integrity report</h1><p>{at} · <b class=\"{}\">{} problem(s)</b></p>",
        if report.problems() == 0 { "ok" } else { "bad" },
        report.problems()
    ));
    if !report.conversions.is_empty() {
        out.push_str("<h2>Daily conversions</h2><table><tr><th>Check</th><th>Day</th><th>Hub</th><th>CRM</th><th></th></tr>");
        for c in &report.conversions {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(&c.name),
                c.day,
                c.hub,
                c.crm,
                if c.agrees { "ok" } else { "bad" },
                if c.agrees { "agree" } else { "differ" }
            ));
        }
        out.push_str("</table>");
    }
    for (name, r) in [
        ("Contacts", &report.contacts),
        ("Companies", &report.companies),
    ] {
        out.push_str(&format!(
            "<h2>{name}</h2><table><tr><th>HubSpot records</th><td>{}</td></tr><tr><th>Zoho records</th><td>{}</td></tr>\
             <tr><th>Linked pairs</th><td>{}</td></tr><tr><th>Pairs in agreement</th><td>{}</td></tr></table>",
            r.hubspot_records, r.zoho_records, r.pairs, r.pairs_equal
        ));
        if !r.different.is_empty() {
            out.push_str("<h3>Pairs that differ</h3><table><tr><th>HubSpot id</th><th>Zoho id</th><th>Fields</th><th>Checksums</th></tr>");
            for d in &r.different {
                out.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>",
                    esc(&d.hubspot_id),
                    esc(&d.zoho_id),
                    esc(&d.fields.join(", ")),
                    d.hubspot_checksum,
                    d.zoho_checksum
                ));
            }
            out.push_str("</table>");
        }
        for (title, ids) in [
            ("In HubSpot, missing in Zoho", &r.missing_in_zoho),
            ("Hot in Zoho, missing in HubSpot", &r.missing_in_hubspot),
        ] {
            if !ids.is_empty() {
                out.push_str(&format!("<h3>{title}</h3><p>{}</p>", esc(&ids.join(", "))));
            }
        }
        for (title, pairs) in [
            (
                "Matching but not linked (HubSpot → Zoho)",
                &r.unlinked_matches,
            ),
            (
                "Links to a record that is gone (HubSpot → Zoho)",
                &r.dangling,
            ),
        ] {
            if !pairs.is_empty() {
                let list: Vec<String> = pairs.iter().map(|(h, z)| format!("{h} → {z}")).collect();
                out.push_str(&format!("<h3>{title}</h3><p>{}</p>", esc(&list.join(", "))));
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// The start (epoch ms) of the UTC day before the one `now_ms` is in: the day a daily
/// check looks at, once it is over.
pub fn yesterday_start_ms(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000) * 86_400_000 - 86_400_000
}

/// The start (epoch ms) of a UTC day given as `YYYY-MM-DD`.
pub fn day_start_ms(day: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(day, &format).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Writes the report as `reconcile-<time>.json` and `.html` into `dir`; their paths.
pub fn write(
    report: &Report,
    dir: &std::path::Path,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let stamp = time::OffsetDateTime::from_unix_timestamp(report.generated_at_ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| report.generated_at_ms.to_string());
    let json_path = dir.join(format!("reconcile-{stamp}.json"));
    let html_path = dir.join(format!("reconcile-{stamp}.html"));
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(report).unwrap_or_default(),
    )?;
    std::fs::write(&html_path, html(report))?;
    // Absolute: the command that asked may run in another directory.
    Ok((json_path.canonicalize()?, html_path.canonicalize()?))
}

/// What a reconciliation reads.
pub struct Reconciler {
    pub hubspot: Arc<HubSpotClient>,
    pub zoho: Arc<ZohoClient>,
    pub mappings: Arc<dyn IdMappings>,
    pub events: Arc<dyn raccordo_core::EventQuery>,
    pub config: Arc<SyncConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error("state store: {0}")]
    Store(#[from] raccordo_core::StoreError),
}

impl Reconciler {
    async fn all(&self, kind: ObjectKind, system: System) -> Result<Vec<CrmRecord>, CrmError> {
        let object = self.object(kind);
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (records, next) = match system {
                System::HubSpot => {
                    let p: Vec<String> = object.fields.iter().map(|f| f.hubspot.clone()).collect();
                    self.hubspot.list_page(kind, &p, cursor.as_deref()).await?
                }
                System::Zoho => {
                    let f: Vec<String> = object.fields.iter().map(|f| f.zoho.clone()).collect();
                    self.zoho.list_page(kind, &f, cursor.as_deref()).await?
                }
            };
            out.extend(records);
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    fn object(&self, kind: ObjectKind) -> &ObjectSync {
        match kind {
            ObjectKind::Contact => &self.config.contacts,
            ObjectKind::Company => &self.config.companies,
        }
    }

    /// Counts one day's conversions in the hub (stored events of the source with the
    /// check's fields, by event time) and in the CRM.
    async fn conversions(&self, day_start_ms: i64) -> Result<Vec<ConversionCount>, ReconcileError> {
        let day_end_ms = day_start_ms + 86_400_000;
        let day = time::OffsetDateTime::from_unix_timestamp(day_start_ms / 1000)
            .map(|t| t.date().to_string())
            .unwrap_or_default();
        let mut out = Vec::new();
        for check in &self.config.conversion_checks {
            let Ok(source) = raccordo_core::SourceName::new(check.source.clone()) else {
                continue;
            };
            let mut hub = 0u64;
            let mut after = None;
            loop {
                let page = self
                    .events
                    .read(raccordo_core::EventFilter {
                        after_seq: after,
                        source: Some(source.clone()),
                        fields: check
                            .event_fields
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        event_time_from_ms: Some(day_start_ms),
                        event_time_to_ms: Some(day_end_ms),
                        limit: 1000,
                    })
                    .await?;
                hub += page.events.len() as u64;
                match page.next_after_seq {
                    Some(next) if !page.events.is_empty() => after = Some(next),
                    _ => break,
                }
            }
            let crm = match check.crm {
                System::HubSpot => {
                    self.hubspot
                        .count(
                            check.object,
                            &check.field,
                            &check.value,
                            &check.date_field,
                            day_start_ms,
                            day_end_ms,
                        )
                        .await?
                }
                System::Zoho => {
                    self.zoho
                        .count(
                            check.object,
                            &check.field,
                            &check.value,
                            &check.date_field,
                            day_start_ms,
                            day_end_ms,
                        )
                        .await?
                }
            };
            out.push(ConversionCount {
                name: check.name.clone(),
                day: day.clone(),
                hub,
                crm,
                agrees: counts_agree(hub, crm, check.tolerance),
            });
        }
        Ok(out)
    }

    /// Compares both CRMs, and the conversions of the UTC day starting at `day_start_ms`.
    pub async fn run_for_day(
        &self,
        now_ms: i64,
        day_start_ms: i64,
    ) -> Result<Report, ReconcileError> {
        let mut report = self.run(now_ms).await?;
        report.conversions = self.conversions(day_start_ms).await?;
        Ok(report)
    }

    async fn run(&self, now_ms: i64) -> Result<Report, ReconcileError> {
        let mut reports = Vec::new();
        for kind in ObjectKind::ALL {
            let hubspot = self.all(kind, System::HubSpot).await?;
            let zoho = self.all(kind, System::Zoho).await?;
            let mut links = HashMap::new();
            for r in &hubspot {
                if let Some(z) = self
                    .mappings
                    .find(
                        &record_ref(System::HubSpot, kind, &r.id),
                        System::Zoho.as_str(),
                    )
                    .await?
                {
                    links.insert(r.id.clone(), z);
                }
            }
            reports.push(compare(self.object(kind), &hubspot, &zoho, &links));
        }
        let companies = reports.pop().unwrap_or_default();
        let contacts = reports.pop().unwrap_or_default();
        Ok(Report {
            generated_at_ms: now_ms,
            contacts,
            companies,
            conversions: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_agree_within_the_tolerance() {
        assert!(counts_agree(100, 100, 0.0));
        assert!(!counts_agree(100, 99, 0.0));
        assert!(counts_agree(100, 98, 0.02));
        assert!(!counts_agree(100, 97, 0.02));
        assert!(counts_agree(0, 0, 0.0));
        assert!(!counts_agree(0, 1, 0.5));
    }

    fn record(id: &str, values: serde_json::Value) -> CrmRecord {
        CrmRecord {
            id: id.into(),
            values: serde_json::from_value(values).unwrap(),
            ..CrmRecord::default()
        }
    }

    #[test]
    fn every_kind_of_disagreement_is_found_and_named() {
        let object = ObjectSync::default_contacts();
        let hubspot = [
            record("1", json!({"email": "a@x.it", "city": "Roma"})),
            record("2", json!({"email": "b@x.it", "city": "Bari"})),
            record("3", json!({"email": "c@x.it"})),
            record("4", json!({"email": "d@x.it"})),
        ];
        let zoho = [
            record("91", json!({"Email": "a@x.it", "Mailing_City": "Roma"})),
            record("92", json!({"Email": "b@x.it", "Mailing_City": "Lecce"})),
            record("94", json!({"Email": "d@x.it"})),
            record(
                "95",
                json!({"Email": "e@x.it", "Lifecycle_Stage": "Opportunity"}),
            ),
            record("96", json!({"Email": "f@x.it", "Lifecycle_Stage": "Lead"})),
        ];
        let links: HashMap<String, String> = [("1", "91"), ("2", "92"), ("5", "97")]
            .map(|(h, z)| (h.to_string(), z.to_string()))
            .into();
        let r = compare(&object, &hubspot, &zoho, &links);
        assert_eq!(
            (r.hubspot_records, r.zoho_records, r.pairs, r.pairs_equal),
            (4, 5, 2, 1)
        );
        assert_eq!(r.different.len(), 1);
        assert_eq!(r.different[0].fields, ["city"]);
        assert_ne!(
            r.different[0].hubspot_checksum,
            r.different[0].zoho_checksum
        );
        assert_eq!(r.missing_in_zoho, ["3"]);
        assert_eq!(r.unlinked_matches, [("4".to_string(), "94".to_string())]);
        assert_eq!(r.missing_in_hubspot, ["95"], "only the hot one");
        assert_eq!(r.dangling, [("5".to_string(), "97".to_string())]);
        assert_eq!(r.problems(), 5);
        let page = html(&Report {
            generated_at_ms: 0,
            contacts: r,
            companies: ObjectReport::default(),
            conversions: vec![ConversionCount {
                name: "acquisti".into(),
                day: "2026-11-25".into(),
                hub: 3,
                crm: 2,
                agrees: false,
            }],
        });
        assert!(page.contains("<td>acquisti</td><td>2026-11-25</td><td>3</td><td>2</td>"));
        assert!(page.contains("6 problem(s)") && page.contains("<td>city</td>"));
        assert!(!page.contains("Lecce"), "values are never in the report");
    }
}
