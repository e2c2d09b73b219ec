//! Window assignment and the window operator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// The last millisecond inside the window (Flink's `maxTimestamp`).
    pub fn last(&self) -> i64 {
        self.end - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
}

impl WindowSpec {
    /// Tumbling windows of `size_ms` (5 minutes by default elsewhere), 15 s out-of-orderness,
    /// 1 h allowed lateness.
    pub fn tumbling(size_ms: i64) -> Self {
        Self {
            size_ms,
            slide_ms: size_ms,
            out_of_orderness_ms: 15_000,
            allowed_lateness_ms: 3_600_000,
        }
    }

    pub fn sliding(size_ms: i64, slide_ms: i64) -> Self {
        Self {
            slide_ms,
            ..Self::tumbling(size_ms)
        }
    }

    /// Checks the parameters; the operator assumes a valid spec.
    pub fn validate(&self) -> Result<(), String> {
        if self.size_ms <= 0 || self.slide_ms <= 0 {
            return Err("window size and slide must be positive".into());
        }
        if self.slide_ms > self.size_ms {
            return Err(
                "the slide cannot be longer than the window (events would fall between windows)"
                    .into(),
            );
        }
        if self.out_of_orderness_ms < 0 || self.allowed_lateness_ms < 0 {
            return Err("out-of-orderness and lateness cannot be negative".into());
        }
        Ok(())
    }

    /// Whether `window`'s state is gone at `watermark`: past its end and its lateness, a
    /// record for it is counted nowhere but as late.
    pub fn is_gone(&self, window: Window, watermark: i64) -> bool {
        watermark >= window.last().saturating_add(self.allowed_lateness_ms)
    }

    /// Whether a record at time `t` is too late for every window holding it, at `watermark`
    /// (what the operator answers [`Placement::Late`] for).
    pub fn is_too_late(&self, t: i64, watermark: i64) -> bool {
        self.windows_for(t).all(|w| self.is_gone(w, watermark))
    }

    /// Every window holding time `t`, earliest first.
    pub fn windows_for(&self, t: i64) -> impl Iterator<Item = Window> + use<> {
        let (size, slide) = (self.size_ms, self.slide_ms);
        let last_start = t.div_euclid(slide) * slide;
        // Windows starting after t - size hold t; the earliest such start on the grid:
        let first_start = last_start - ((size - 1) / slide) * slide;
        (0..)
            .map(move |k| first_start + k * slide)
            .take_while(move |s| *s <= last_start)
            .filter(move |s| t < s + size)
            .map(move |start| Window {
                start,
                end: start + size,
            })
    }
}

/// A per-window, per-key aggregate. `add` must be commutative for results to be
/// independent of arrival order.
pub trait Aggregate: Clone + Default {
    type Input<'a>: ?Sized;
    fn add(&mut self, input: &Self::Input<'_>);

    /// What an emission carries: by default a copy. An aggregate whose state is larger than
    /// its result (a distinct set behind a count) returns just the result, so that firing
    /// and late updates do not copy the state.
    fn emitted(&self) -> Self {
        self.clone()
    }
}

/// Why a window's value is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Firing {
    /// The watermark passed the window's end: the result is final (barring late updates).
    Final,
    /// A late record within the allowed lateness changed an already-final window.
    LateUpdate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Emission<K, A> {
    pub window: Window,
    pub key: K,
    pub firing: Firing,
    pub value: A,
}

/// Where a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Added to at least one window that had not fired.
    OnTime,
    /// Added only to windows that had fired (they were re-emitted).
    LateUpdate,
    /// Too late for all its windows: not added; the caller keeps it in the late table.
    Late,
}

/// The windowing state machine for one stream (or one partition of it).
/// Everything a [`WindowOperator`] needs to carry on where it stopped (Arroyo's
/// `handle_checkpoint`): the windows still open or within their lateness, which of them
/// fired, and the newest event time. Fired results older than that are not part of it: the
/// caller keeps what it emitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorState<K, A> {
    pub spec: WindowSpec,
    pub max_event_time: Option<i64>,
    pub windows: Vec<(Window, Vec<(K, A)>)>,
    pub fired: Vec<Window>,
}

#[derive(Debug, Clone)]
pub struct WindowOperator<K, A> {
    spec: WindowSpec,
    max_event_time: Option<i64>,
    /// The watermark of the last `advance`, and whether a window that the watermark had
    /// already passed got state since: unless one of the two changed, `advance` has nothing
    /// to fire or forget and returns at once (it runs after every record).
    advanced_to: i64,
    passed_window_added: bool,
    /// Per window, the value of each key. Fx hashing: several times cheaper than SipHash,
    /// and the keys come from authenticated sources, into one small map per window.
    windows: BTreeMap<Window, HashMap<K, A, rustc_hash::FxBuildHasher>>,
    fired: BTreeSet<Window>,
}

impl<K: Clone + Eq + Hash, A: Aggregate> WindowOperator<K, A> {
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            max_event_time: None,
            advanced_to: i64::MIN,
            passed_window_added: false,
            windows: BTreeMap::new(),
            fired: BTreeSet::new(),
        }
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// A copy of the state to save.
    pub fn checkpoint(&self) -> OperatorState<K, A> {
        OperatorState {
            spec: self.spec,
            max_event_time: self.max_event_time,
            windows: self
                .windows
                .iter()
                .map(|(w, keys)| {
                    (
                        *w,
                        keys.iter().map(|(k, a)| (k.clone(), a.clone())).collect(),
                    )
                })
                .collect(),
            fired: self.fired.iter().copied().collect(),
        }
    }

    /// An operator that continues from `state`, which must have been taken with `spec`
    /// (windows of another size mean nothing here: `None`).
    pub fn restore(spec: WindowSpec, state: OperatorState<K, A>) -> Option<Self> {
        (state.spec == spec).then(|| Self {
            spec,
            max_event_time: state.max_event_time,
            advanced_to: i64::MIN,
            passed_window_added: false,
            windows: state
                .windows
                .into_iter()
                .map(|(w, keys)| (w, keys.into_iter().collect()))
                .collect(),
            fired: state.fired.into_iter().collect(),
        })
    }

    /// The current watermark (`i64::MIN` before any record).
    pub fn watermark(&self) -> i64 {
        self.max_event_time.map_or(i64::MIN, |t| {
            t.saturating_sub(self.spec.out_of_orderness_ms)
        })
    }

    /// Feeds one record: adds it to its windows, re-emits fired windows it changed, then
    /// advances the watermark and fires what it passed. `emit` receives every emission.
    pub fn process(
        &mut self,
        time: i64,
        key: &K,
        input: &A::Input<'_>,
        emit: &mut impl FnMut(Emission<K, A>),
    ) -> Placement {
        let watermark = self.watermark(); // before this record
        let mut added_on_time = false;
        let mut added_late = false;
        for window in self.spec.windows_for(time) {
            if self.spec.is_gone(window, watermark) {
                continue; // this window's state is gone
            }
            if watermark >= window.last() && !self.fired.contains(&window) {
                self.passed_window_added = true;
            }
            let keys = self.windows.entry(window).or_default();
            // One hash for a key the window already has; the key is cloned only the first
            // time the window sees it.
            if let Some(value) = keys.get_mut(key) {
                value.add(input);
            } else {
                let mut value = A::default();
                value.add(input);
                keys.insert(key.clone(), value);
            }
            if watermark >= window.last() {
                added_late = true;
                if let Some(value) = keys.get(key) {
                    emit(Emission {
                        window,
                        key: key.clone(),
                        firing: Firing::LateUpdate,
                        value: value.emitted(),
                    });
                }
            } else {
                added_on_time = true;
            }
        }
        self.max_event_time = Some(self.max_event_time.map_or(time, |m| m.max(time)));
        self.advance(emit);
        match (added_on_time, added_late) {
            (true, _) => Placement::OnTime,
            (false, true) => Placement::LateUpdate,
            (false, false) => Placement::Late,
        }
    }

    /// Takes in that the stream this operator sees a partition of has reached `time` (the
    /// newest event time of the whole stream before this partition's next record), and
    /// fires what that passes. Partition operators fed each record's stream-wide time this
    /// way place, fire and drop exactly as one operator over the whole stream would, so
    /// their results, summed per window and key, are the whole stream's (see
    /// `partitioned_operators_fed_stream_times_equal_one_operator`).
    pub fn observe(&mut self, time: i64, emit: &mut impl FnMut(Emission<K, A>)) {
        if self.max_event_time.is_some_and(|m| m >= time) {
            return;
        }
        self.max_event_time = Some(time);
        self.advance(emit);
    }

    /// The newest event time taken in (records and `observe`).
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }

    /// Fires windows the watermark has passed and forgets those past their lateness.
    fn advance(&mut self, emit: &mut impl FnMut(Emission<K, A>)) {
        let watermark = self.watermark();
        if watermark == self.advanced_to && !self.passed_window_added {
            return;
        }
        self.advanced_to = watermark;
        self.passed_window_added = false;
        let due: Vec<Window> = self
            .windows
            .keys()
            .take_while(|w| w.start <= watermark) // a window can only be due once its start is
            .filter(|w| w.last() <= watermark && !self.fired.contains(w))
            .copied()
            .collect();
        for window in due {
            self.fired.insert(window);
            if let Some(keys) = self.windows.get(&window) {
                for (key, value) in keys {
                    emit(Emission {
                        window,
                        key: key.clone(),
                        firing: Firing::Final,
                        value: value.emitted(),
                    });
                }
            }
        }
        let lateness = self.spec.allowed_lateness_ms;
        let expired: Vec<Window> = self
            .windows
            .keys()
            .take_while(|w| w.start <= watermark)
            .filter(|w| w.last().saturating_add(lateness) <= watermark)
            .copied()
            .collect();
        for window in expired {
            self.windows.remove(&window);
            self.fired.remove(&window);
        }
    }

    /// Windows that have not fired yet, with their current values: the provisional results
    /// a caller publishes while windows are open (early firing).
    pub fn open_windows(&self) -> impl Iterator<Item = (Window, &K, &A)> {
        self.windows
            .iter()
            .filter(|(w, _)| !self.fired.contains(w))
            .flat_map(|(w, keys)| keys.iter().map(move |(k, a)| (*w, k, a)))
    }

    /// Every window still held (open or within lateness).
    pub fn held_windows(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Count(u64);
    impl Aggregate for Count {
        type Input<'a> = ();
        fn add(&mut self, _: &()) {
            self.0 += 1;
        }
    }

    const MIN: i64 = 60_000;

    fn run(spec: WindowSpec, times: &[i64]) -> (Vec<Emission<(), Count>>, Vec<Placement>) {
        let mut op = WindowOperator::<(), Count>::new(spec);
        let mut out = Vec::new();
        let placements = times
            .iter()
            .map(|t| op.process(*t, &(), &(), &mut |e| out.push(e)))
            .collect();
        (out, placements)
    }

    #[test]
    fn tumbling_windows_are_epoch_aligned() {
        let spec = WindowSpec::tumbling(5 * MIN);
        let w: Vec<Window> = spec.windows_for(7 * MIN).collect();
        assert_eq!(
            w,
            [Window {
                start: 5 * MIN,
                end: 10 * MIN
            }]
        );
        assert_eq!(
            spec.windows_for(-1).collect::<Vec<_>>(),
            [Window {
                start: -5 * MIN,
                end: 0
            }]
        );
        assert_eq!(spec.windows_for(0).next().unwrap().start, 0);
    }

    #[test]
    fn sliding_windows_cover_every_window_holding_the_time() {
        let spec = WindowSpec::sliding(10 * MIN, 5 * MIN);
        let starts: Vec<i64> = spec.windows_for(12 * MIN).map(|w| w.start / MIN).collect();
        assert_eq!(starts, [5, 10]);
        let spec = WindowSpec::sliding(10 * MIN, 3 * MIN);
        let starts: Vec<i64> = spec.windows_for(12 * MIN).map(|w| w.start / MIN).collect();
        assert_eq!(starts, [3, 6, 9, 12]);
    }

    #[test]
    fn the_boundaries_follow_flink_to_the_millisecond() {
        // size 5 min, ooo 15 s, lateness 1 h; first window [0, 5 min).
        let spec = WindowSpec::tumbling(5 * MIN);
        let e = 5 * MIN;
        // A record at e - 1 + 15 s makes W = e - 1 exactly: the window fires.
        let (out, _) = run(spec, &[1_000, e - 1 + 15_000]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].firing, out[0].value.0), (Firing::Final, 1));
        // One millisecond less: W = e - 2, nothing fires.
        let (out, _) = run(spec, &[1_000, e - 2 + 15_000]);
        assert!(out.is_empty());
        // With W = e - 1, a record for [0, e) is a late update, re-emitted at once.
        let (out, placements) = run(spec, &[1_000, e - 1 + 15_000, 2_000]);
        assert_eq!(placements[2], Placement::LateUpdate);
        assert_eq!((out[1].firing, out[1].value.0), (Firing::LateUpdate, 2));
        // With W = e - 1 + lateness exactly, the window is gone: the record is late.
        let (out, placements) = run(spec, &[1_000, e - 1 + 3_600_000 + 15_000, 2_000]);
        assert_eq!(placements[2], Placement::Late);
        assert!(out.iter().all(|o| o.window.start != 0 || o.value.0 == 1));
        // One millisecond earlier it is still a late update.
        let (_, placements) = run(spec, &[1_000, e - 2 + 3_600_000 + 15_000, 2_000]);
        assert_eq!(placements[2], Placement::LateUpdate);
    }

    /// Builds an arrival order in which no record is more than `disorder` behind the
    /// largest time seen before it.
    fn bounded_shuffle(mut times: Vec<i64>, swaps: Vec<(usize, usize)>, disorder: i64) -> Vec<i64> {
        times.sort();
        for (a, b) in swaps {
            let (a, b) = (a % times.len(), b % times.len());
            times.swap(a, b);
            let ok = times
                .iter()
                .scan(i64::MIN, |max, t| {
                    let fine = *max == i64::MIN || *t >= *max - disorder;
                    *max = (*max).max(*t);
                    Some(fine)
                })
                .all(|f| f);
            if !ok {
                times.swap(a, b);
            }
        }
        times
    }

    /// The last emitted value of each window.
    fn finals(out: &[Emission<(), Count>]) -> BTreeMap<Window, u64> {
        let mut last = BTreeMap::new();
        for e in out {
            last.insert(e.window, e.value.0);
        }
        last
    }

    /// The last value emitted per (window, key): what a caller keeps of an operator's output.
    /// (Labels may differ at one edge: a window the watermark passed before it held anything
    /// fires when its first record arrives; a partition that had none of its records then
    /// labels its first record's emission `Final` after the `LateUpdate` — same values.)
    fn emitted_by_window_and_key(
        out: &[Emission<u8, Count>],
    ) -> std::collections::BTreeMap<(i64, u8), u64> {
        let mut last = std::collections::BTreeMap::new();
        for e in out {
            last.insert((e.window.start, e.key), e.value.0);
        }
        last
    }

    proptest! {
        /// The stream split by key into partitions, each with an operator of its own that is
        /// told, before each of its records, the newest event time of the whole stream so
        /// far (`observe`), and, at the end, the stream's newest time: every record has the
        /// same placement as in one operator over the whole stream, and each partition's
        /// final values are the whole operator's for its keys — so summing partitions per
        /// window gives the single stream's results, cell for cell.
        #[test]
        fn partitioned_operators_fed_stream_times_equal_one_operator(
            records in prop::collection::vec((0i64..3_600_000, 0u8..6), 1..300),
            partitions in 1usize..4,
            lateness in prop_oneof![Just(0i64), Just(600_000i64)],
        ) {
            let spec = WindowSpec {
                allowed_lateness_ms: lateness,
                ..WindowSpec::tumbling(5 * MIN)
            };
            let mut whole = WindowOperator::<u8, Count>::new(spec);
            let mut whole_out = Vec::new();
            let mut parts: Vec<WindowOperator<u8, Count>> =
                (0..partitions).map(|_| WindowOperator::new(spec)).collect();
            let mut parts_out = Vec::new();
            let mut newest: Option<i64> = None;
            for (time, key) in &records {
                let expected = whole.process(*time, key, &(), &mut |e| whole_out.push(e));
                let part = &mut parts[*key as usize % partitions];
                if let Some(newest) = newest {
                    part.observe(newest, &mut |e| parts_out.push(e));
                }
                let placed = part.process(*time, key, &(), &mut |e| parts_out.push(e));
                prop_assert_eq!(placed, expected, "record at {} key {}", time, key);
                newest = Some(newest.map_or(*time, |n| n.max(*time)));
            }
            // The stream's end: every partition learns the newest time (an idle partition's
            // windows fire too).
            for part in &mut parts {
                part.observe(newest.unwrap(), &mut |e| parts_out.push(e));
            }
            prop_assert_eq!(
                emitted_by_window_and_key(&parts_out),
                emitted_by_window_and_key(&whole_out)
            );
        }

        /// Within the allowed lateness, the results do not depend on arrival order, and
        /// every record is counted once in each of its windows.
        #[test]
        fn results_do_not_depend_on_arrival_order(
            times in prop::collection::vec(0i64..3_600_000, 1..200),
            swaps in prop::collection::vec((0usize..200, 0usize..200), 0..300),
            sliding in any::<bool>(),
        ) {
            let mut spec = if sliding { WindowSpec::sliding(5 * MIN, MIN) } else { WindowSpec::tumbling(5 * MIN) };
            spec.allowed_lateness_ms = 2 * 3_600_000; // nothing in this stream is beyond lateness
            let shuffled = bounded_shuffle(times.clone(), swaps, 3_600_000);
            let mut sorted = times.clone();
            sorted.sort();
            // Close every window with a record far in the future.
            let closer = 10 * 3_600_000;
            let (a, pa) = run(spec, &[sorted.clone(), vec![closer]].concat());
            let (b, pb) = run(spec, &[shuffled, vec![closer]].concat());
            prop_assert!(pa.iter().chain(&pb).all(|p| *p != Placement::Late));
            let (fa, fb) = (finals(&a), finals(&b));
            prop_assert_eq!(&fa, &fb);
            // Exactly once: the expected count of each window from the raw times.
            for (window, count) in fa.iter().filter(|(w, _)| w.start < closer - 10 * MIN) {
                let expected = times.iter().filter(|t| window.start <= **t && **t < window.end).count() as u64;
                prop_assert_eq!(*count, expected, "window {:?}", window);
            }
        }

        /// Every record is either in a window or reported late: none vanishes.
        #[test]
        fn late_records_are_never_dropped_silently(
            times in prop::collection::vec(0i64..7_200_000, 1..300),
            lateness in 0i64..600_000,
        ) {
            let mut spec = WindowSpec::tumbling(5 * MIN);
            spec.allowed_lateness_ms = lateness;
            let mut op = WindowOperator::<(), Count>::new(spec);
            let mut emitted = Vec::new();
            let mut late = 0u64;
            for t in &times {
                if op.process(*t, &(), &(), &mut |e| emitted.push(e)) == Placement::Late {
                    late += 1;
                }
            }
            op.process(i64::MAX / 4, &(), &(), &mut |e| emitted.push(e));
            let counted: u64 = finals(&emitted).iter().filter(|(w, _)| w.start < i64::MAX / 8).map(|(_, c)| *c).sum();
            prop_assert_eq!(counted + late, times.len() as u64);
        }

        /// `is_too_late` over the watermark before a record answers what the operator
        /// decides for it, so an ingest answer can say `late` before the windows see it.
        #[test]
        fn is_too_late_predicts_the_operators_placement(
            times in prop::collection::vec(0i64..7_200_000, 1..300),
            lateness in 0i64..600_000,
            sliding in any::<bool>(),
        ) {
            let mut spec = if sliding { WindowSpec::sliding(5 * MIN, MIN) } else { WindowSpec::tumbling(5 * MIN) };
            spec.allowed_lateness_ms = lateness;
            let mut op = WindowOperator::<(), Count>::new(spec);
            for t in &times {
                let predicted = spec.is_too_late(*t, op.watermark());
                let placed = op.process(*t, &(), &(), &mut |_| {});
                prop_assert_eq!(predicted, placed == Placement::Late, "t {}", t);
            }
        }

        /// Stopping at any point, saving the state and going on from the saved copy gives
        /// exactly what an uninterrupted run gives.
        #[test]
        fn a_restored_checkpoint_continues_exactly(
            times in prop::collection::vec(0i64..3_600_000, 1..200),
            cut in 0usize..200,
            lateness in 0i64..1_200_000,
        ) {
            let mut spec = WindowSpec::tumbling(5 * MIN);
            spec.allowed_lateness_ms = lateness;
            let all = [times.clone(), vec![10 * 3_600_000]].concat();
            let (expected, expected_places) = run(spec, &all);
            let cut = cut.min(all.len());
            let mut op = WindowOperator::<(), Count>::new(spec);
            let mut out = Vec::new();
            let mut places = Vec::new();
            for t in &all[..cut] {
                places.push(op.process(*t, &(), &(), &mut |e| out.push(e)));
            }
            let saved = op.checkpoint();
            let mut op = WindowOperator::<(), Count>::restore(spec, saved).expect("same spec");
            for t in &all[cut..] {
                places.push(op.process(*t, &(), &(), &mut |e| out.push(e)));
            }
            prop_assert_eq!(out, expected);
            prop_assert_eq!(places, expected_places);
            let other = WindowSpec::tumbling(MIN);
            prop_assert!(WindowOperator::<(), Count>::restore(other, op.checkpoint()).is_none());
        }
    }
}
