//! Field-level merge of one mapped pair (DESIGN §3 "CRM sync").
//!
//! raccordo keeps, for each mapped pair, the canonical values of the mapped fields as last
//! synced (the *snapshot*). A side changed a field when its value differs from the
//! snapshot's. Then, field by field:
//! - equal on both sides: nothing to write (this is how raccordo's own writes, coming back
//!   as webhooks, are recognised as echoes and produce no work);
//! - changed on one side only: that value goes to the other side;
//! - changed on both (or no snapshot yet): the newer modification wins — HubSpot's property
//!   history timestamp where known, else the record's modification time — and Zoho, the
//!   master, wins ties;
//! - an empty value does not overwrite a filled one unless the mapping says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fields::Canonical;

/// A record's mapped fields on one side, in canonical form, with when they changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideValues {
    /// By field name (the HubSpot property name of the mapping).
    pub values: BTreeMap<String, Canonical>,
    /// When the record was last modified (epoch ms).
    pub modified_at_ms: i64,
    /// When each field was last set, where the CRM says (HubSpot property history).
    pub field_modified_at_ms: BTreeMap<String, i64>,
}

impl SideValues {
    fn value(&self, field: &str) -> Option<&str> {
        self.values.get(field).and_then(|v| v.as_deref())
    }
    fn changed_at(&self, field: &str) -> i64 {
        self.field_modified_at_ms
            .get(field)
            .copied()
            .unwrap_or(self.modified_at_ms)
    }
}

/// The mapped fields of a pair as last synced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub values: BTreeMap<String, Canonical>,
}

/// A field's merge rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeField {
    pub name: String,
    pub empty_overwrites: bool,
}

/// What to write to each side, and the snapshot to keep once both writes are done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergePlan {
    pub to_hubspot: BTreeMap<String, Canonical>,
    pub to_zoho: BTreeMap<String, Canonical>,
    pub snapshot: Snapshot,
}

impl MergePlan {
    /// Nothing to write on either side.
    pub fn is_empty(&self) -> bool {
        self.to_hubspot.is_empty() && self.to_zoho.is_empty()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Winner {
    HubSpot,
    Zoho,
}

/// Merges one pair. Fields missing from a side's `values` (not read, or not convertible)
/// are left alone on both sides and keep their snapshot value.
pub fn merge(
    fields: &[MergeField],
    snapshot: Option<&Snapshot>,
    hubspot: &SideValues,
    zoho: &SideValues,
) -> MergePlan {
    let mut plan = MergePlan::default();
    for field in fields {
        let name = field.name.as_str();
        let before = snapshot.and_then(|s| s.values.get(name));
        let (Some(h), Some(z)) = (hubspot.values.get(name), zoho.values.get(name)) else {
            if let Some(b) = before {
                plan.snapshot.values.insert(name.into(), b.clone());
            }
            continue;
        };
        if h == z {
            plan.snapshot.values.insert(name.into(), h.clone());
            continue;
        }
        let hubspot_changed = before != Some(h);
        let zoho_changed = before != Some(z);
        let winner = match (hubspot_changed, zoho_changed) {
            (true, false) => Winner::HubSpot,
            (false, true) => Winner::Zoho,
            _ => {
                if hubspot.changed_at(name) > zoho.changed_at(name) {
                    Winner::HubSpot
                } else {
                    Winner::Zoho
                }
            }
        };
        // An empty winner does not clear a filled value unless the field allows it; then
        // the filled value stands, and (when only one side changed) the snapshot keeps its
        // old value so the next merge sees the same situation and stays quiet.
        let winner_empty = match winner {
            Winner::HubSpot => hubspot.value(name).is_none(),
            Winner::Zoho => zoho.value(name).is_none(),
        };
        if winner_empty && !field.empty_overwrites {
            let both_changed = hubspot_changed && zoho_changed;
            if both_changed {
                // The other, filled value wins instead.
                let filled = if winner == Winner::HubSpot { z } else { h };
                if winner == Winner::HubSpot {
                    plan.to_hubspot.insert(name.into(), filled.clone());
                } else {
                    plan.to_zoho.insert(name.into(), filled.clone());
                }
                plan.snapshot.values.insert(name.into(), filled.clone());
            } else if let Some(b) = before {
                plan.snapshot.values.insert(name.into(), b.clone());
            }
            continue;
        }
        let value = if winner == Winner::HubSpot { h } else { z };
        if winner == Winner::HubSpot {
            plan.to_zoho.insert(name.into(), value.clone());
        } else {
            plan.to_hubspot.insert(name.into(), value.clone());
        }
        plan.snapshot.values.insert(name.into(), value.clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(names: &[&str]) -> Vec<MergeField> {
        names
            .iter()
            .map(|n| MergeField {
                name: (*n).into(),
                empty_overwrites: false,
            })
            .collect()
    }

    fn side(values: &[(&str, Option<&str>)], modified: i64) -> SideValues {
        SideValues {
            values: values
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.map(str::to_string)))
                .collect(),
            modified_at_ms: modified,
            field_modified_at_ms: BTreeMap::new(),
        }
    }

    fn snap(values: &[(&str, Option<&str>)]) -> Snapshot {
        Snapshot {
            values: side(values, 0).values,
        }
    }

    #[test]
    fn a_field_changed_on_one_side_goes_to_the_other() {
        let f = fields(&["firstname", "city"]);
        let s = snap(&[("firstname", Some("Anna")), ("city", Some("Roma"))]);
        let h = side(
            &[("firstname", Some("Annalisa")), ("city", Some("Roma"))],
            10,
        );
        let z = side(&[("firstname", Some("Anna")), ("city", Some("Milano"))], 20);
        let plan = merge(&f, Some(&s), &h, &z);
        assert_eq!(
            plan.to_zoho,
            [("firstname".into(), Some("Annalisa".into()))].into()
        );
        assert_eq!(
            plan.to_hubspot,
            [("city".into(), Some("Milano".into()))].into()
        );
        assert_eq!(
            plan.snapshot,
            snap(&[("firstname", Some("Annalisa")), ("city", Some("Milano"))])
        );
    }

    #[test]
    fn both_changed_the_newer_wins_by_property_history_and_zoho_wins_ties() {
        let f = fields(&["phone"]);
        let s = snap(&[("phone", Some("+391"))]);
        let mut h = side(&[("phone", Some("+392"))], 100);
        let z = side(&[("phone", Some("+393"))], 50);
        assert_eq!(
            merge(&f, Some(&s), &h, &z).to_zoho.get("phone"),
            Some(&Some("+392".into()))
        );
        // The HubSpot record changed later, but this property earlier than Zoho's record.
        h.field_modified_at_ms.insert("phone".into(), 40);
        assert_eq!(
            merge(&f, Some(&s), &h, &z).to_hubspot.get("phone"),
            Some(&Some("+393".into()))
        );
        h.field_modified_at_ms.insert("phone".into(), 50);
        assert_eq!(
            merge(&f, Some(&s), &h, &z).to_hubspot.get("phone"),
            Some(&Some("+393".into())),
            "Zoho wins ties"
        );
    }

    #[test]
    fn an_emptied_field_does_not_erase_the_other_side_unless_configured() {
        let mut f = fields(&["city"]);
        let s = snap(&[("city", Some("Roma"))]);
        let h = side(&[("city", None)], 100);
        let z = side(&[("city", Some("Roma"))], 50);
        let plan = merge(&f, Some(&s), &h, &z);
        assert!(plan.is_empty());
        assert_eq!(
            plan.snapshot, s,
            "the next merge sees the same and stays quiet"
        );
        f[0].empty_overwrites = true;
        assert_eq!(merge(&f, Some(&s), &h, &z).to_zoho.get("city"), Some(&None));
    }

    #[test]
    fn with_no_snapshot_zoho_fills_and_wins_unless_hubspot_is_newer() {
        let f = fields(&["firstname", "city"]);
        let h = side(&[("firstname", Some("Anna")), ("city", None)], 10);
        let z = side(
            &[("firstname", Some("Anna Maria")), ("city", Some("Roma"))],
            10,
        );
        let plan = merge(&f, None, &h, &z);
        assert!(plan.to_zoho.is_empty());
        assert_eq!(plan.to_hubspot.len(), 2);
    }

    fn value() -> impl Strategy<Value = Canonical> {
        prop_oneof![Just(None), "[a-c]".prop_map(Some)]
    }

    fn values() -> impl Strategy<Value = BTreeMap<String, Canonical>> {
        proptest::collection::btree_map("[pqr]", value(), 0..4)
    }

    /// Every field present, as when both records were read and converted.
    fn full_values() -> impl Strategy<Value = BTreeMap<String, Canonical>> {
        (value(), value(), value()).prop_map(|(p, q, r)| {
            [
                ("p".to_string(), p),
                ("q".to_string(), q),
                ("r".to_string(), r),
            ]
            .into()
        })
    }

    fn apply(side: &SideValues, writes: &BTreeMap<String, Canonical>, at: i64) -> SideValues {
        let mut next = side.clone();
        if !writes.is_empty() {
            next.modified_at_ms = at;
            for (k, v) in writes {
                next.values.insert(k.clone(), v.clone());
                next.field_modified_at_ms.insert(k.clone(), at);
            }
        }
        next
    }

    proptest! {
        /// After the writes, both sides hold the same value for every field both sides
        /// have, except where an empty value was kept from overwriting a filled one.
        #[test]
        fn after_the_writes_both_sides_agree(
            s in proptest::option::of(values()), h in values(), z in values(),
            hm in 0i64..5, zm in 0i64..5, overwrite: bool,
        ) {
            let f: Vec<MergeField> = ["p", "q", "r"].iter().map(|n| MergeField { name: (*n).into(), empty_overwrites: overwrite }).collect();
            let snapshot = s.map(|values| Snapshot { values });
            let hs = SideValues { values: h, modified_at_ms: hm, ..Default::default() };
            let zo = SideValues { values: z, modified_at_ms: zm, ..Default::default() };
            let plan = merge(&f, snapshot.as_ref(), &hs, &zo);
            let h2 = apply(&hs, &plan.to_hubspot, 10);
            let z2 = apply(&zo, &plan.to_zoho, 10);
            for name in ["p", "q", "r"] {
                if let (Some(a), Some(b)) = (h2.values.get(name), z2.values.get(name)) {
                    let empty_kept = !overwrite && (a.is_none() != b.is_none());
                    prop_assert!(a == b || empty_kept, "{name}: {a:?} vs {b:?}");
                    if a == b {
                        prop_assert_eq!(plan.snapshot.values.get(name), Some(a));
                    }
                }
            }
            // A write never carries the value the side already has.
            for (k, v) in &plan.to_hubspot { prop_assert_ne!(hs.values.get(k), Some(v)); }
            for (k, v) in &plan.to_zoho { prop_assert_ne!(zo.values.get(k), Some(v)); }
        }

        /// Merging again after the writes (the webhooks of raccordo's own writes) writes
        /// nothing: echoes produce no work, and the sync never ping-pongs.
        #[test]
        fn a_second_merge_after_the_writes_is_quiet(
            s in proptest::option::of(values()), h in values(), z in values(),
            hm in 0i64..5, zm in 0i64..5, overwrite: bool,
        ) {
            let f: Vec<MergeField> = ["p", "q", "r"].iter().map(|n| MergeField { name: (*n).into(), empty_overwrites: overwrite }).collect();
            let snapshot = s.map(|values| Snapshot { values });
            let hs = SideValues { values: h, modified_at_ms: hm, ..Default::default() };
            let zo = SideValues { values: z, modified_at_ms: zm, ..Default::default() };
            let plan = merge(&f, snapshot.as_ref(), &hs, &zo);
            let h2 = apply(&hs, &plan.to_hubspot, 10);
            let z2 = apply(&zo, &plan.to_zoho, 10);
            let again = merge(&f, Some(&plan.snapshot), &h2, &z2);
            prop_assert!(again.is_empty(), "{again:?}");
        }

        /// A change made on one side only always reaches the other side (unless it empties
        /// a field that must not be emptied).
        #[test]
        fn a_one_sided_change_is_never_lost(
            base in full_values(), field in "[pqr]", new in value(), on_hubspot: bool, hm in 0i64..5, zm in 0i64..5,
        ) {
            let f: Vec<MergeField> = ["p", "q", "r"].iter().map(|n| MergeField { name: (*n).into(), empty_overwrites: false }).collect();
            let snapshot = Snapshot { values: base.clone() };
            let mut changed = base.clone();
            changed.insert(field.clone(), new.clone());
            let (h, z) = if on_hubspot { (changed, base.clone()) } else { (base.clone(), changed) };
            let plan = merge(&f, Some(&snapshot), &SideValues { values: h, modified_at_ms: hm, ..Default::default() }, &SideValues { values: z, modified_at_ms: zm, ..Default::default() });
            let target = if on_hubspot { &plan.to_zoho } else { &plan.to_hubspot };
            if base.get(&field) != Some(&new) && new.is_some() {
                prop_assert_eq!(target.get(&field), Some(&new));
            }
            let other = if on_hubspot { &plan.to_hubspot } else { &plan.to_zoho };
            prop_assert!(other.is_empty());
        }
    }
}
