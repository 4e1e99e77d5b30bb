//! The webhook's Prometheus metrics, served as OpenMetrics text on their own plain-HTTP port
//! so that scraping never needs the webhook's TLS material.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Content type of the exposition, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of one `POST /mutate` request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// A labelled pod was answered with a non-empty patch.
    Mutated = 0,
    /// The request was allowed without a patch (not ours, opted out, already mutated).
    Skipped = 1,
    /// The pod was denied (docs/webhook-reference.md).
    Denied = 2,
    /// The body was not a usable AdmissionReview (answered 400 or 413).
    Error = 3,
}

impl Outcome {
    /// Every outcome, so all of them can be pre-registered and read 0 instead of being absent.
    pub const ALL: [Outcome; 4] = [
        Outcome::Mutated,
        Outcome::Skipped,
        Outcome::Denied,
        Outcome::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Mutated => "mutated",
            Outcome::Skipped => "skipped",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// Why a `POST /mutate` body was not read to its end (each also counts as an admission with
/// outcome `error`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Over the largest body (413).
    TooLarge = 0,
    /// The connection broke or the framing was invalid (400).
    Unreadable = 1,
    /// Not whole within `--body-timeout` (408).
    TimedOut = 2,
    /// Slower than the config's `body-min-rate` (408).
    TooSlow = 3,
    /// The shared byte budget stayed full (503).
    Busy = 4,
}

impl BodyRefusal {
    /// Every reason, so all of them can be pre-registered and read 0 instead of being absent.
    pub const ALL: [BodyRefusal; 5] = [
        BodyRefusal::TooLarge,
        BodyRefusal::Unreadable,
        BodyRefusal::TimedOut,
        BodyRefusal::TooSlow,
        BodyRefusal::Busy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyRefusal::TooLarge => "too_large",
            BodyRefusal::Unreadable => "unreadable",
            BodyRefusal::TimedOut => "timed_out",
            BodyRefusal::TooSlow => "too_slow",
            BodyRefusal::Busy => "busy",
        }
    }
}

impl EncodeLabelValue for BodyRefusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: BodyRefusal,
}

/// Which file-backed input a reload was about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reloaded {
    /// The serving certificate and key.
    Tls,
    /// The configuration YAML.
    Config,
}

impl EncodeLabelValue for Reloaded {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Reloaded::Tls => "tls",
            Reloaded::Config => "config",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    what: Reloaded,
    result: ReloadResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum ReloadResult {
    Success,
    Failure,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        })
    }
}

/// Typed handles to every series the webhook exposes.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// One counter per outcome, in the order of [`Outcome::ALL`].
    admissions: [Counter; 4],
    /// One counter per reason, in the order of [`BodyRefusal::ALL`].
    refused_bodies: [Counter; 5],
    duration: Histogram,
    cert_expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// Registers the webhook's metrics on `registry` and returns handles to them.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<OutcomeLabels, Counter>::default();
        let admissions =
            Outcome::ALL.map(|outcome| family.get_or_create_owned(&OutcomeLabels { outcome }));
        registry.register(
            "wave_webhook_admissions",
            "Admission reviews answered on POST /mutate, by outcome",
            family,
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        let refused_bodies =
            BodyRefusal::ALL.map(|reason| refusals.get_or_create_owned(&RefusalLabels { reason }));
        registry.register(
            "wave_webhook_refused_bodies",
            "Request bodies on POST /mutate not read to their end, by reason",
            refusals,
        );
        let duration = Histogram::new([
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register_with_unit(
            "wave_webhook_admission_duration",
            "Time from a complete request body to the serialized answer, including the owner lookup",
            Unit::Seconds,
            duration.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register_with_unit(
            "wave_webhook_cert_expiry_timestamp",
            "Expiry (notAfter, Unix time) of the serving certificate currently loaded",
            Unit::Seconds,
            cert_expiry.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        for what in [Reloaded::Tls, Reloaded::Config] {
            for result in [ReloadResult::Success, ReloadResult::Failure] {
                reloads.get_or_create_owned(&ReloadLabels { what, result });
            }
        }
        registry.register(
            "wave_webhook_reloads",
            "Reloads of the certificate or the configuration after the files changed, by result",
            reloads.clone(),
        );
        Metrics {
            admissions,
            refused_bodies,
            duration,
            cert_expiry,
            reloads,
        }
    }

    /// Counts one answered admission and how long it took.
    pub fn observe_admission(&self, outcome: Outcome, seconds: f64) {
        self.admissions[outcome as usize].inc();
        self.duration.observe(seconds);
    }

    /// Counts a body not read to its end (its admission is counted too, as an error).
    pub fn observe_refused_body(&self, reason: BodyRefusal) {
        self.refused_bodies[reason as usize].inc();
    }

    /// Records the notAfter of the certificate now being served.
    pub fn set_cert_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    /// Counts a reload attempt of `what`.
    pub fn observe_reload(&self, what: Reloaded, ok: bool) {
        let result = if ok {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        };
        self.reloads
            .get_or_create(&ReloadLabels { what, result })
            .inc();
    }
}

/// Encodes `registry` as OpenMetrics text (it ends with `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut body = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut body, registry)
        .expect("writing to a String cannot fail");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_reads_zero_from_the_start_and_counts_on_its_own() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.observe_refused_body(BodyRefusal::TooSlow);
        let text = encode(&registry);
        for reason in BodyRefusal::ALL {
            let count = u8::from(reason == BodyRefusal::TooSlow);
            let line = format!(
                "wave_webhook_refused_bodies_total{{reason=\"{}\"}} {count}\n",
                reason.as_str()
            );
            assert!(text.contains(&line), "{line} missing in:\n{text}");
        }
    }
}
