//! Prometheus metrics (docs/architecture.md §9): counters, gauges and histograms with
//! bounded label sets, kept in a [`Registry`] and written in the Prometheus
//! text exposition format (version 0.0.4). Names follow the rules of docs/architecture.md §9
//! (`amdim_` prefix, base units, counters ending in `_total`); `Registry`
//! checks them when a family is made, so a bad name is a programming error
//! caught by the first test that builds the family.
//!
//! This module owns the data model and the text encoding only: what is
//! measured belongs to the coordinator and the worker, serving it to
//! `http`. Values are `f64` held in atomics; updates never block scrapes
//! for longer than one family's label map lookup.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The content type of [`Registry::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An `f64` updated atomically.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    fn add(&self, v: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }
}

/// A monotonically increasing value.
#[derive(Debug, Default)]
pub struct Counter(AtomicF64);

impl Counter {
    /// Adds `v`; negative or non-finite increments are ignored (a counter
    /// never goes down).
    pub fn add(&self, v: f64) {
        if v > 0.0 && v.is_finite() {
            self.0.add(v);
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1.0);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicF64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.set(v);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// Observations counted into cumulative buckets, with their sum and count.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, strictly increasing; +Inf is implicit.
    bounds: Arc<[f64]>,
    /// Per-bucket (not cumulative) counts; the last one is +Inf.
    counts: Vec<AtomicU64>,
    sum: AtomicF64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum: AtomicF64::default(),
        }
    }

    /// Records one observation; NaN is ignored.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let bucket = self.bounds.partition_point(|&b| b < v);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.add(v);
    }

    /// (upper bound, cumulative count) per bucket, ending with +Inf.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(b, c)| {
                total += c.load(Ordering::Relaxed);
                (b, total)
            })
            .collect()
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations so far.
    pub fn sum(&self) -> f64 {
        self.sum.get()
    }
}

/// `count` bucket bounds from `start`, each `factor` times the previous.
pub fn exponential_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |b| Some(b * factor)).take(count).collect()
}

/// What a family holds; decides the `# TYPE` line and how samples are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How a metric is made, for `Family`.
pub trait Metric: Send + Sync + 'static {
    #[doc(hidden)]
    fn make(bounds: &Arc<[f64]>) -> Self;
}

impl Metric for Counter {
    fn make(_: &Arc<[f64]>) -> Self {
        Counter::default()
    }
}

impl Metric for Gauge {
    fn make(_: &Arc<[f64]>) -> Self {
        Gauge::default()
    }
}

impl Metric for Histogram {
    fn make(bounds: &Arc<[f64]>) -> Self {
        Histogram::new(bounds.clone())
    }
}

/// One metric name with its label names; one child per label-value tuple.
pub struct Family<M> {
    name: String,
    help: String,
    labels: Vec<String>,
    bounds: Arc<[f64]>,
    children: Mutex<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M: Metric> Family<M> {
    /// The child for `values` (one per label name, in order), made on first use.
    ///
    /// # Panics
    /// When the number of values differs from the number of label names:
    /// a programming error, never caused by data.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        assert_eq!(values.len(), self.labels.len(), "{}: label values for {:?}", self.name, self.labels);
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.entry(key).or_insert_with(|| Arc::new(M::make(&self.bounds))).clone()
    }

    /// Forgets every child (for gauges recomputed from a source of truth,
    /// so that label values that vanished stop being exported).
    pub fn clear(&self) {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Keeps only the children whose `label` is `value` (e.g. the series of
    /// the job a worker runs now, forgetting its previous jobs').
    pub fn retain(&self, label: &str, value: &str) {
        if let Some(i) = self.labels.iter().position(|l| l == label) {
            self.children.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k[i] == value);
        }
    }
}

/// A family of any kind, for the registry.
trait AnyFamily: Send + Sync {
    fn encode(&self, out: &mut String);
    fn retain(&self, label: &str, value: &str);
}

/// Escapes a label value per the text format (backslash, quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// Escapes a HELP text (backslash, newline).
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

/// A sample value in the text format (`+Inf`, `-Inf`, `NaN` spelled out).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// `{a="x",b="y"}` (with an optional extra pair), or nothing without labels.
fn label_set(names: &[String], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{}\"", escape_label(v)));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

impl<M: Metric + Sample> AnyFamily for Family<M> {
    fn retain(&self, label: &str, value: &str) {
        Family::retain(self, label, value);
    }

    fn encode(&self, out: &mut String) {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, M::KIND.name());
        for (values, m) in children.iter() {
            m.write(&self.name, &self.labels, values, out);
        }
    }
}

/// How one child is written.
trait Sample {
    const KIND: Kind;
    fn write(&self, name: &str, labels: &[String], values: &[String], out: &mut String);
}

impl Sample for Counter {
    const KIND: Kind = Kind::Counter;
    fn write(&self, name: &str, labels: &[String], values: &[String], out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", label_set(labels, values, None), format_value(self.get()));
    }
}

impl Sample for Gauge {
    const KIND: Kind = Kind::Gauge;
    fn write(&self, name: &str, labels: &[String], values: &[String], out: &mut String) {
        let _ = writeln!(out, "{name}{} {}", label_set(labels, values, None), format_value(self.get()));
    }
}

impl Sample for Histogram {
    const KIND: Kind = Kind::Histogram;
    fn write(&self, name: &str, labels: &[String], values: &[String], out: &mut String) {
        let cumulative = self.cumulative();
        for (bound, count) in &cumulative {
            let le = format_value(*bound);
            let _ = writeln!(out, "{name}_bucket{} {count}", label_set(labels, values, Some(("le", &le))));
        }
        let set = label_set(labels, values, None);
        let _ = writeln!(out, "{name}_sum{set} {}", format_value(self.sum()));
        let count = cumulative.last().map_or(0, |c| c.1);
        let _ = writeln!(out, "{name}_count{set} {count}");
    }
}

/// Whether `name` is a valid metric or label name of the text format.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The families of one process, in registration order.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<(String, Arc<dyn AnyFamily>)>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn register<M: Metric + Sample>(&self, name: &str, help: &str, labels: &[&str], bounds: Vec<f64>) -> Arc<Family<M>> {
        assert!(
            name.starts_with("amdim_") && valid_name(name),
            "metric name {name}: amdim_ prefix and [a-zA-Z0-9_]"
        );
        assert_eq!(
            M::KIND == Kind::Counter,
            name.ends_with("_total"),
            "metric {name}: counters and only counters end in _total"
        );
        assert!(
            labels.iter().all(|l| valid_name(l) && *l != "le"),
            "metric {name}: label names {labels:?}"
        );
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "metric {name}: bucket bounds must increase");
        let family = Arc::new(Family::<M> {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            bounds: bounds.into(),
            children: Mutex::new(BTreeMap::new()),
        });
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        assert!(families.iter().all(|(n, _)| n != name), "metric {name} registered twice");
        families.push((name.to_string(), family.clone()));
        family
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Arc<Family<Counter>> {
        self.register(name, help, labels, Vec::new())
    }

    /// A gauge family.
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Arc<Family<Gauge>> {
        self.register(name, help, labels, Vec::new())
    }

    /// A histogram family with the given bucket upper bounds (increasing).
    pub fn histogram(&self, name: &str, help: &str, labels: &[&str], bounds: Vec<f64>) -> Arc<Family<Histogram>> {
        self.register(name, help, labels, bounds)
    }

    fn families(&self) -> Vec<Arc<dyn AnyFamily>> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        families.iter().map(|(_, f)| f.clone()).collect()
    }

    /// In every family with a `label` label, keeps only the series whose
    /// value is `value`.
    pub fn retain(&self, label: &str, value: &str) {
        self.families().iter().for_each(|f| f.retain(label, value));
    }

    /// Every family in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for f in self.families() {
            f.encode(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_encode_in_the_text_format() {
        let r = Registry::new();
        let c = r.counter("amdim_things_total", "Things.\nSecond line", &["job_id"]);
        c.with(&["a\"b"]).add(2.5);
        c.with(&["a\"b"]).inc();
        c.with(&["a\"b"]).add(-7.0);
        let g = r.gauge("amdim_level", "Level", &[]);
        g.with(&[]).set(f64::NAN);
        let h = r.histogram("amdim_wait_seconds", "Wait", &["rank"], vec![0.25, 1.0]);
        for v in [0.125, 0.25, 0.5, 3.0] {
            h.with(&["0"]).observe(v);
        }
        let text = r.encode();
        let expected = "# HELP amdim_things_total Things.\\nSecond line\n\
# TYPE amdim_things_total counter\n\
amdim_things_total{job_id=\"a\\\"b\"} 3.5\n\
# HELP amdim_level Level\n\
# TYPE amdim_level gauge\n\
amdim_level NaN\n\
# HELP amdim_wait_seconds Wait\n\
# TYPE amdim_wait_seconds histogram\n\
amdim_wait_seconds_bucket{rank=\"0\",le=\"0.25\"} 2\n\
amdim_wait_seconds_bucket{rank=\"0\",le=\"1\"} 3\n\
amdim_wait_seconds_bucket{rank=\"0\",le=\"+Inf\"} 4\n\
amdim_wait_seconds_sum{rank=\"0\"} 3.875\n\
amdim_wait_seconds_count{rank=\"0\"} 4\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let h = Histogram::new(vec![1.0, 2.0].into());
        for v in [1.0, 1.5, 2.0, 2.5, f64::NAN] {
            h.observe(v);
        }
        assert_eq!(h.cumulative(), vec![(1.0, 1), (2.0, 3), (f64::INFINITY, 4)]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum(), 7.0);
    }

    #[test]
    fn cleared_children_stop_being_exported() {
        let r = Registry::new();
        let g = r.gauge("amdim_job_step", "Step", &["job_id", "rank"]);
        g.with(&["j1", "0"]).set(1.0);
        g.with(&["j2", "0"]).set(2.0);
        r.retain("job_id", "j2");
        assert!(!r.encode().contains("j1"));
        assert!(r.encode().contains("j2"));
        g.clear();
        assert!(!r.encode().contains("j2"));
    }

    #[test]
    #[should_panic(expected = "_total")]
    fn a_gauge_named_like_a_counter_is_refused() {
        Registry::new().gauge("amdim_x_total", "x", &[]);
    }

    #[test]
    #[should_panic(expected = "prefix")]
    fn names_without_the_prefix_are_refused() {
        Registry::new().counter("x_total", "x", &[]);
    }

    #[test]
    fn exponential_buckets_multiply() {
        assert_eq!(exponential_buckets(0.5, 2.0, 3), vec![0.5, 1.0, 2.0]);
    }
}
