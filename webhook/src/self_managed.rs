//! TLS without cert-manager (`--tls-self-managed`, docs/webhook-server.md).
//!
//! The webhook keeps its CA in a Secret of its namespace. The first replica creates it and
//! the others adopt it (create, and on AlreadyExists read it), so every replica signs with
//! the same CA. Each replica issues its own short-lived serving certificate in memory (its
//! key never leaves the process) and copies the CA bundle into the
//! MutatingWebhookConfiguration only when the bytes there differ.
//!
//! Rotation is a sequence of Secret states every replica can compute from the Secret alone:
//! a *next* CA is added to the bundle first; once the API server's bundle holds it for the
//! overlap period it becomes the signing CA and the old one stays in the bundle as
//! *previous*; after another overlap the previous one is dropped. At every moment the bundle
//! holds the CA of every certificate a replica serves. Each state carries a generation, and
//! the webhook configuration records the generation its bundle came from, so a replica that
//! has not yet read the newest Secret never writes an older bundle back over it.
//!
//! [`CaState`] and [`Timing`] are pure: given the Secret and the clock they say what comes
//! next. [`follow`] does the API calls around them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::errors::error_chain;
use crate::reload::Live;
use crate::tls;

/// Annotation holding the generation of the CA state (Secret) and of the bundle (webhook
/// configuration).
pub const GENERATION_ANNOTATION: &str = "waveloadtest.io/ca-generation";
/// Annotation on the Secret: when its state last changed (Unix milliseconds).
pub const CHANGED_ANNOTATION: &str = "waveloadtest.io/ca-changed-at";

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NEXT_CERT: &str = "next.crt";
const NEXT_KEY: &str = "next.key";
const PREVIOUS_CERT: &str = "previous.crt";

/// After losing a write race, the next round reads the newer state this soon.
const RETRY_AFTER_CONFLICT: Duration = Duration::from_millis(50);

/// Certificates start this long (ms) before they are issued, for clocks slightly behind ours.
const BACKDATE: i64 = 60_000;

/// Why the CA or a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The Secret exists but is not one this webhook can use.
    #[error(
        "Secret {secret} holds no usable CA ({what}): delete it and the webhook creates a new one, or name another with --tls-ca-secret"
    )]
    Unusable { secret: String, what: String },
    /// rcgen could not generate or sign.
    #[error("cannot issue a certificate")]
    Issue(#[source] rcgen::Error),
    /// The generated pair was refused by rustls.
    #[error("the issued serving certificate cannot be served")]
    Serve(#[source] rustls::Error),
    /// An API call failed.
    #[error("{action} {object}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// How long things live, and how early they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Validity of a CA; a rotation starts when a third of it is left.
    pub ca_validity: Duration,
    /// Validity of a serving certificate; it is reissued when a third of it is left.
    pub serving_validity: Duration,
    /// How long the bundle holds two CAs before and after the signing CA changes: long
    /// enough for every API server to load the new bundle and every replica to switch.
    pub overlap: Duration,
    /// How often the Secret and the webhook configuration are read again (a bundle someone
    /// overwrote is put back within this).
    pub check_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ca_validity: Duration::from_secs(365 * 24 * 3600),
            serving_validity: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(3600),
            check_interval: Duration::from_secs(60),
        }
    }
}

/// Where the CA lives and what the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfManaged {
    /// The webhook's namespace (the Secret's and the Service's).
    pub namespace: Option<String>,
    /// Name of the CA Secret.
    pub secret: String,
    /// Name of the MutatingWebhookConfiguration whose `caBundle` is kept current.
    pub webhook_configuration: String,
    /// Name of the Service the API server calls; the serving certificate names it.
    pub service: String,
    /// Lifetimes.
    pub timing: Timing,
}

/// One CA: its certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
    /// notAfter, Unix milliseconds.
    pub not_after: i64,
}

impl Authority {
    /// A new self-signed CA valid from (about) `now` for `validity`.
    pub fn generate(now: i64, validity: Duration) -> Result<Authority, CaError> {
        let key = KeyPair::generate().map_err(CaError::Issue)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("wave-webhook CA {now}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let not_after = whole_seconds(now.saturating_add(millis(validity)));
        params.not_before = datetime(now - BACKDATE);
        params.not_after = datetime(not_after);
        let cert = params.self_signed(&key).map_err(CaError::Issue)?;
        Ok(Authority {
            cert: cert.pem(),
            key: key.serialize_pem(),
            not_after,
        })
    }

    fn parse(secret: &str, cert: &[u8], key: &[u8], name: &str) -> Result<Authority, CaError> {
        let unusable = |what: String| CaError::Unusable {
            secret: secret.to_string(),
            what,
        };
        let cert = String::from_utf8(cert.to_vec())
            .map_err(|_| unusable(format!("{name}.crt is not PEM text")))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| unusable(format!("{name}.key is not PEM text")))?;
        let not_after = pem_not_after(&cert)
            .ok_or_else(|| unusable(format!("{name}.crt is not a PEM certificate")))?;
        KeyPair::from_pem(&key).map_err(|_| unusable(format!("{name}.key is not a PEM key")))?;
        Ok(Authority {
            cert,
            key,
            not_after,
        })
    }
}

/// What the CA Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaState {
    /// The CA that signs serving certificates.
    pub current: Authority,
    /// A CA already in the bundle that will sign next.
    pub next: Option<Authority>,
    /// The CA that signed before `current`, kept in the bundle for the overlap (certificate).
    pub previous: Option<String>,
    /// Grows by one with every change.
    pub generation: u64,
    /// When the last change was made, Unix milliseconds.
    pub changed_at: i64,
}

impl CaState {
    /// A first state with a new CA.
    pub fn new(now: i64, timing: &Timing) -> Result<CaState, CaError> {
        Ok(CaState {
            current: Authority::generate(now, timing.ca_validity)?,
            next: None,
            previous: None,
            generation: 1,
            changed_at: now,
        })
    }

    /// The bundle the API server needs: every CA that signs or may sign soon, in a fixed
    /// order, so every replica computes the same bytes.
    pub fn bundle(&self) -> String {
        let mut bundle = self.current.cert.clone();
        if let Some(next) = &self.next {
            bundle.push_str(&next.cert);
        }
        if let Some(previous) = &self.previous {
            bundle.push_str(previous);
        }
        bundle
    }

    /// The state that follows this one at `now`, if a change is due. `live_bundle` is the
    /// bundle the webhook configuration holds: a next CA signs only once it is there.
    pub fn step(
        &self,
        now: i64,
        timing: &Timing,
        live_bundle: Option<&[u8]>,
    ) -> Result<Option<CaState>, CaError> {
        let overlap_over = now - self.changed_at >= millis(timing.overlap);
        let changed = |mut state: CaState| {
            state.generation = self.generation + 1;
            state.changed_at = now;
            state
        };
        if self.current.not_after <= now {
            // Nothing served from the old CA can be trusted any more: start again.
            return Ok(Some(changed(CaState::new(now, timing)?)));
        }
        if let Some(next) = &self.next {
            let in_bundle = live_bundle.is_some_and(|b| contains(b, next.cert.as_bytes()));
            // An expiring CA is replaced even if the overlap is not over.
            let expiring = self.current.not_after - now <= millis(timing.overlap);
            if in_bundle && (overlap_over || expiring) {
                return Ok(Some(changed(CaState {
                    current: next.clone(),
                    next: None,
                    previous: Some(self.current.cert.clone()),
                    ..self.clone()
                })));
            }
            return Ok(None);
        }
        if self.previous.is_some() {
            if overlap_over {
                return Ok(Some(changed(CaState {
                    previous: None,
                    ..self.clone()
                })));
            }
            return Ok(None);
        }
        if self.current.not_after - now <= millis(timing.ca_validity) / 3 {
            return Ok(Some(changed(CaState {
                next: Some(Authority::generate(now, timing.ca_validity)?),
                ..self.clone()
            })));
        }
        Ok(None)
    }

    /// Reads the state from a Secret's data and annotations; `secret` names it in errors.
    pub fn from_secret(secret_name: &str, secret: &Secret) -> Result<CaState, CaError> {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let get = |key: &str| data.get(key).map(|b| b.0.as_slice());
        let authority = |cert: &str, key: &str, name: &str| match (get(cert), get(key)) {
            (Some(c), Some(k)) => Authority::parse(secret_name, c, k, name).map(Some),
            (None, None) => Ok(None),
            _ => Err(CaError::Unusable {
                secret: secret_name.to_string(),
                what: format!("{cert} and {key} must both be present"),
            }),
        };
        let current = authority(CA_CERT, CA_KEY, "ca")?.ok_or_else(|| CaError::Unusable {
            secret: secret_name.to_string(),
            what: format!("no {CA_CERT} and {CA_KEY}"),
        })?;
        let next = authority(NEXT_CERT, NEXT_KEY, "next")?;
        let previous = match get(PREVIOUS_CERT) {
            Some(b) => Some(
                String::from_utf8(b.to_vec())
                    .ok()
                    .filter(|p| pem_not_after(p).is_some())
                    .ok_or_else(|| CaError::Unusable {
                        secret: secret_name.to_string(),
                        what: format!("{PREVIOUS_CERT} is not a PEM certificate"),
                    })?,
            ),
            None => None,
        };
        let annotation = |key: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(|v| v.parse::<i64>().ok())
        };
        Ok(CaState {
            current,
            next,
            previous,
            generation: annotation(GENERATION_ANNOTATION).map_or(0, |g| g.max(0) as u64),
            changed_at: annotation(CHANGED_ANNOTATION).unwrap_or(0),
        })
    }

    /// Writes the state into `secret` (data and annotations), keeping its other metadata.
    pub fn write_into(&self, secret: &mut Secret) {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        };
        put(CA_CERT, &self.current.cert);
        put(CA_KEY, &self.current.key);
        if let Some(next) = &self.next {
            put(NEXT_CERT, &next.cert);
            put(NEXT_KEY, &next.key);
        }
        if let Some(previous) = &self.previous {
            put(PREVIOUS_CERT, previous);
        }
        secret.data = Some(data);
        secret.string_data = None;
        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        annotations.insert(
            GENERATION_ANNOTATION.to_string(),
            self.generation.to_string(),
        );
        annotations.insert(CHANGED_ANNOTATION.to_string(), self.changed_at.to_string());
    }
}

/// A serving certificate issued by this replica.
#[derive(Debug, Clone)]
pub struct Serving {
    /// What rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// The CA that signed it (certificate PEM).
    pub issuer: String,
    /// notBefore and notAfter, Unix milliseconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Serving {
    /// Whether this certificate should be replaced at `now` by one from `state`'s CA.
    pub fn due(&self, state: &CaState, now: i64) -> bool {
        self.issuer != state.current.cert
            || now >= self.not_after - (self.not_after - self.not_before) / 3
    }
}

/// The DNS names the API server uses to reach `service` in `namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// Issues a serving certificate for `names` from `ca`, valid for `validity` or until the
/// CA expires, whichever comes first.
pub fn issue(
    ca: &Authority,
    names: Vec<String>,
    now: i64,
    validity: Duration,
) -> Result<Serving, CaError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(CaError::Issue)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(CaError::Issue)?;
    let key = KeyPair::generate().map_err(CaError::Issue)?;
    let mut params = CertificateParams::new(names).map_err(CaError::Issue)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "wave-webhook");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let not_before = whole_seconds(now - BACKDATE);
    let not_after = whole_seconds(now.saturating_add(millis(validity))).min(ca.not_after);
    params.not_before = datetime(not_before);
    params.not_after = datetime(not_after);
    let cert = params.signed_by(&key, &issuer).map_err(CaError::Issue)?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    // rcgen's keys are PKCS#8: handed to rustls as DER, with no PEM round trip.
    let private_key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let certified =
        CertifiedKey::from_der(chain, private_key, &tls::provider()).map_err(CaError::Serve)?;
    Ok(Serving {
        certified: Arc::new(certified),
        issuer: ca.cert.clone(),
        not_before,
        not_after,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Certificates hold whole seconds: a time in ms rounded down to what the certificate says.
fn whole_seconds(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000
}

fn datetime(ms: i64) -> time::OffsetDateTime {
    // Out-of-range times (a validity of centuries) are clamped to the last representable day.
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000).clamp(0, 253_402_300_799))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn pem_not_after(pem: &str) -> Option<i64> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp().saturating_mul(1000))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Unix milliseconds.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// Keeps the CA Secret, the serving certificate and the webhook configuration's bundle
/// current until `stop` is cancelled. Never returns an error: a failed round is logged and
/// tried again (the previous certificate, if any, stays in service meanwhile).
pub async fn follow(
    client: Client,
    options: SelfManaged,
    live: Arc<Live>,
    stop: CancellationToken,
) {
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client);
    let names = service_names(&options.service, &namespace);
    let mut replica = Replica::default();
    let mut last_error = String::new();
    loop {
        let round = Round {
            secrets: &secrets,
            configurations: &configurations,
            options: &options,
            namespace: &namespace,
            names: &names,
        };
        let wait = match round.run(&mut replica, &live).await {
            Ok(again) => {
                last_error.clear();
                if again {
                    RETRY_AFTER_CONFLICT
                } else {
                    next_wait(replica.serving.as_ref(), &options.timing)
                }
            }
            Err(e) => {
                let message = error_chain(&e);
                // The same failure every interval is logged once, until it changes.
                if message != last_error {
                    warn!(error = %message, "self-managed TLS: round failed; trying again");
                    last_error = message;
                }
                options.timing.check_interval.min(Duration::from_secs(5))
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What one replica remembers between rounds.
#[derive(Default)]
struct Replica {
    /// The certificate it serves.
    serving: Option<Serving>,
    /// Whether the missing webhook configuration was logged (once until it appears).
    missing_logged: bool,
}

fn next_wait(serving: Option<&Serving>, timing: &Timing) -> Duration {
    let renew_in = serving.map_or(0, |s| {
        let renew_at = s.not_after - (s.not_after - s.not_before) / 3;
        (renew_at - now()).max(0)
    });
    timing
        .check_interval
        .min(Duration::from_millis(renew_in.max(100) as u64))
}

struct Round<'a> {
    secrets: &'a Api<Secret>,
    configurations: &'a Api<MutatingWebhookConfiguration>,
    options: &'a SelfManaged,
    namespace: &'a str,
    names: &'a [String],
}

impl Round<'_> {
    /// One pass: read (or create) the Secret, move it on if due, make the bundle current,
    /// and renew the serving certificate. Returns whether to go again at once (a write lost
    /// a race and the newer state must be read).
    async fn run(&self, replica: &mut Replica, live: &Live) -> Result<bool, CaError> {
        let secret_name = format!("{}/{}", self.namespace, self.options.secret);
        let configuration = self
            .configurations
            .get_opt(&self.options.webhook_configuration)
            .await
            .map_err(|source| self.api("cannot read MutatingWebhookConfiguration", source))?;
        let recorded = configuration.as_ref().map_or(0, recorded_generation);
        let Some((mut secret, mut state)) = self.read_or_create(&secret_name, recorded).await?
        else {
            return Ok(true);
        };
        let live_bundle = configuration.as_ref().and_then(first_bundle);
        let now = now();
        if let Some(next) = state.step(now, &self.options.timing, live_bundle.as_deref())? {
            next.write_into(&mut secret);
            match self
                .secrets
                .replace(&self.options.secret, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => {
                    info!(secret = %secret_name, generation = next.generation, phase = phase(&next), "self-managed TLS: CA state changed");
                    state = next;
                }
                Err(e) if status_code(&e) == Some(409) => return Ok(true),
                Err(source) => {
                    return Err(CaError::Api {
                        action: "cannot update Secret",
                        object: secret_name,
                        source,
                    });
                }
            }
        }
        let again = match configuration {
            Some(configuration) => {
                replica.missing_logged = false;
                self.patch_bundle(configuration, &state).await?
            }
            None if replica.missing_logged => false,
            None => {
                replica.missing_logged = true;
                warn!(configuration = %self.options.webhook_configuration, "self-managed TLS: MutatingWebhookConfiguration not found; the API server cannot call the webhook until it exists");
                false
            }
        };
        if replica.serving.as_ref().is_none_or(|s| s.due(&state, now)) {
            let issued = issue(
                &state.current,
                self.names.to_vec(),
                now,
                self.options.timing.serving_validity,
            )?;
            live.resolver.set(issued.certified.clone());
            live.metrics.set_cert_expiry(issued.not_after / 1000);
            info!(not_after = issued.not_after / 1000, names = ?self.names, "self-managed TLS: serving certificate issued");
            replica.serving = Some(issued);
        }
        Ok(again)
    }

    /// The Secret and its state; `None` when creating it lost the race (read it again). A
    /// new Secret's generation follows the one the webhook configuration records, so a
    /// deleted and recreated Secret is newer than the bundle it replaces.
    async fn read_or_create(
        &self,
        secret_name: &str,
        recorded: u64,
    ) -> Result<Option<(Secret, CaState)>, CaError> {
        let found = self
            .secrets
            .get_opt(&self.options.secret)
            .await
            .map_err(|source| CaError::Api {
                action: "cannot read Secret",
                object: secret_name.to_string(),
                source,
            })?;
        if let Some(secret) = found {
            let state = CaState::from_secret(secret_name, &secret)?;
            return Ok(Some((secret, state)));
        }
        let state = CaState {
            generation: recorded + 1,
            ..CaState::new(now(), &self.options.timing)?
        };
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.options.secret.clone()),
                namespace: Some(self.namespace.to_string()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/name".to_string(),
                        "wave-webhook".to_string(),
                    ),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "wave-webhook".to_string(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_string()),
            ..Secret::default()
        };
        state.write_into(&mut secret);
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                info!(secret = %secret_name, "self-managed TLS: CA created");
                Ok(Some((created, state)))
            }
            // Another replica created it first: adopt theirs on the next read.
            Err(e) if status_code(&e) == Some(409) => Ok(None),
            Err(source) => Err(CaError::Api {
                action: "cannot create Secret",
                object: secret_name.to_string(),
                source,
            }),
        }
    }

    /// Writes `state`'s bundle into every webhook of the configuration unless it is there
    /// already or the configuration holds a newer generation. Returns whether to go again at
    /// once.
    async fn patch_bundle(
        &self,
        mut configuration: MutatingWebhookConfiguration,
        state: &CaState,
    ) -> Result<bool, CaError> {
        let bundle = state.bundle().into_bytes();
        let recorded = recorded_generation(&configuration);
        let webhooks = configuration.webhooks.get_or_insert_with(Vec::new);
        let current = webhooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&bundle));
        if recorded > state.generation {
            // Another replica wrote a newer state than the one read here: never write an
            // older bundle back; the next check reads the newer Secret. (Only a Secret
            // restored by hand stays older; the log says what to do then.)
            warn!(configuration = %self.options.webhook_configuration, recorded, secret_generation = state.generation, "self-managed TLS: the caBundle comes from a newer CA state than the Secret read; leaving it (if the Secret was restored by hand, remove the {GENERATION_ANNOTATION} annotation from the MutatingWebhookConfiguration)");
            return Ok(false);
        }
        if current && recorded == state.generation {
            return Ok(false);
        }
        for webhook in webhooks.iter_mut() {
            webhook.client_config.ca_bundle = Some(ByteString(bundle.clone()));
        }
        configuration
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                GENERATION_ANNOTATION.to_string(),
                state.generation.to_string(),
            );
        match self
            .configurations
            .replace(
                &self.options.webhook_configuration,
                &PostParams::default(),
                &configuration,
            )
            .await
        {
            Ok(_) => {
                info!(configuration = %self.options.webhook_configuration, generation = state.generation, "self-managed TLS: caBundle updated");
                Ok(false)
            }
            Err(e) if status_code(&e) == Some(409) => Ok(true),
            Err(source) => Err(self.api("cannot update MutatingWebhookConfiguration", source)),
        }
    }

    fn api(&self, action: &'static str, source: kube::Error) -> CaError {
        CaError::Api {
            action,
            object: self.options.webhook_configuration.clone(),
            source,
        }
    }
}

fn recorded_generation(configuration: &MutatingWebhookConfiguration) -> u64 {
    configuration
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GENERATION_ANNOTATION))
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(0)
}

fn first_bundle(configuration: &MutatingWebhookConfiguration) -> Option<Vec<u8>> {
    configuration
        .webhooks
        .as_ref()?
        .iter()
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()))
        .reduce(|a, b| if a == b { a } else { None })
        .flatten()
}

fn phase(state: &CaState) -> &'static str {
    match (&state.next, &state.previous) {
        (Some(_), _) => "next CA in the bundle",
        (None, Some(_)) => "signing with the new CA, previous still in the bundle",
        (None, None) => "one CA",
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600 * 1000;
    const DAY: i64 = 24 * HOUR;

    fn timing() -> Timing {
        Timing {
            ca_validity: Duration::from_millis(300 * DAY as u64),
            serving_validity: Duration::from_millis(DAY as u64),
            overlap: Duration::from_secs(3600),
            check_interval: Duration::from_secs(60),
        }
    }

    fn certs_in(bundle: &str) -> usize {
        CertificateDer::pem_slice_iter(bundle.as_bytes())
            .filter(Result::is_ok)
            .count()
    }

    #[test]
    fn a_young_ca_needs_no_change() {
        let t = timing();
        let state = CaState::new(0, &t).expect("CA");
        assert_eq!(state.step(100 * DAY, &t, None).expect("step"), None);
        assert_eq!(certs_in(&state.bundle()), 1);
    }

    #[test]
    fn rotation_adds_the_next_ca_to_the_bundle_before_it_signs() {
        let t = timing();
        let state = CaState::new(0, &t).expect("CA");
        let next = state
            .step(201 * DAY, &t, None)
            .expect("step")
            .expect("a rotation starts with a third of the validity left");
        assert_eq!(next.generation, 2);
        assert_eq!(next.current, state.current, "the old CA still signs");
        assert!(next.next.is_some());
        assert_eq!(certs_in(&next.bundle()), 2);
    }

    #[test]
    fn the_next_ca_signs_only_once_the_live_bundle_holds_it_for_the_overlap() {
        let t = timing();
        let start = CaState::new(0, &t).expect("CA");
        let adding = start
            .step(201 * DAY, &t, None)
            .expect("step")
            .expect("next");
        let later = 201 * DAY + 2 * HOUR;
        // The API server's bundle does not have it yet: wait, however long it has been.
        let old_bundle = start.bundle();
        assert_eq!(
            adding
                .step(later, &t, Some(old_bundle.as_bytes()))
                .expect("step"),
            None
        );
        // In the bundle, but the overlap is not over.
        let bundle = adding.bundle();
        assert_eq!(
            adding
                .step(201 * DAY + 10, &t, Some(bundle.as_bytes()))
                .expect("step"),
            None
        );
        let promoted = adding
            .step(later, &t, Some(bundle.as_bytes()))
            .expect("step")
            .expect("promoted");
        assert_eq!(Some(&promoted.current), adding.next.as_ref());
        assert_eq!(promoted.previous.as_ref(), Some(&start.current.cert));
        assert_eq!(promoted.generation, 3);
        assert_eq!(certs_in(&promoted.bundle()), 2);
        // The previous CA leaves the bundle one overlap later.
        assert_eq!(
            promoted
                .step(later + 60_000, &t, Some(promoted.bundle().as_bytes()))
                .expect("step"),
            None
        );
        let settled = promoted
            .step(later + HOUR, &t, None)
            .expect("step")
            .expect("previous dropped");
        assert_eq!(settled.previous, None);
        assert_eq!(settled.current, promoted.current);
        assert_eq!(certs_in(&settled.bundle()), 1);
        assert_eq!(settled.generation, 4);
    }

    #[test]
    fn an_expired_ca_is_replaced_at_once() {
        let t = timing();
        let state = CaState::new(0, &t).expect("CA");
        let fresh = state
            .step(301 * DAY, &t, None)
            .expect("step")
            .expect("replaced");
        assert_ne!(fresh.current, state.current);
        assert_eq!((fresh.next.as_ref(), fresh.previous.as_ref()), (None, None));
        assert_eq!(fresh.generation, 2);
    }

    #[test]
    fn the_state_round_trips_through_a_secret() {
        let t = timing();
        let state = CaState::new(0, &t)
            .expect("CA")
            .step(201 * DAY, &t, None)
            .expect("step")
            .expect("next");
        let mut secret = Secret::default();
        state.write_into(&mut secret);
        assert_eq!(CaState::from_secret("ns/ca", &secret).expect("read"), state);
    }

    #[test]
    fn a_secret_without_a_ca_is_refused_with_what_to_do() {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "ca.crt".to_string(),
                ByteString(b"not pem".to_vec()),
            )])),
            ..Secret::default()
        };
        let e =
            CaState::from_secret("wave-system/wave-webhook-ca", &secret).expect_err("half a CA");
        let message = e.to_string();
        assert!(message.contains("wave-system/wave-webhook-ca"), "{message}");
        assert!(
            message.contains("ca.crt and ca.key must both be present"),
            "{message}"
        );
        assert!(message.contains("delete it"), "{message}");
    }

    #[test]
    fn a_serving_certificate_chains_to_the_ca_and_names_the_service() {
        let t = timing();
        let state = CaState::new(now(), &t).expect("CA");
        let names = service_names("wave-webhook", "wave-system");
        let serving = issue(&state.current, names, now(), t.serving_validity).expect("issued");
        let der = &serving.certified.cert[0];
        let (_, leaf) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
        let ca_der = CertificateDer::from_pem_slice(state.current.cert.as_bytes()).expect("pem");
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref()).expect("x509");
        assert_eq!(leaf.issuer(), ca.subject());
        leaf.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        let san = leaf
            .subject_alternative_name()
            .expect("SAN")
            .expect("present")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>();
        assert!(
            san.iter()
                .any(|n| n.contains("wave-webhook.wave-system.svc")),
            "{san:?}"
        );
        assert_eq!(serving.not_after - serving.not_before, DAY + BACKDATE);
    }

    #[test]
    fn a_serving_certificate_is_renewed_at_two_thirds_and_when_the_ca_changes() {
        let t = timing();
        let start = now();
        let state = CaState::new(start, &t).expect("CA");
        let names = service_names("wave-webhook", "wave-system");
        let serving = issue(&state.current, names, start, t.serving_validity).expect("issued");
        assert!(!serving.due(&state, start + HOUR));
        assert!(serving.due(&state, start + DAY * 2 / 3 + BACKDATE));
        let other = CaState::new(start, &t).expect("another CA");
        assert!(serving.due(&other, start + HOUR));
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let t = Timing {
            ca_validity: Duration::from_secs(3600),
            ..timing()
        };
        let start = now();
        let state = CaState::new(start, &t).expect("CA");
        let names = service_names("wave-webhook", "wave-system");
        let serving = issue(&state.current, names, start, t.serving_validity).expect("issued");
        assert_eq!(serving.not_after, state.current.not_after);
    }

    #[test]
    fn the_live_bundle_is_the_one_every_webhook_shares() {
        use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
        let hook = |bundle: &[u8]| MutatingWebhook {
            client_config: WebhookClientConfig {
                ca_bundle: Some(ByteString(bundle.to_vec())),
                ..WebhookClientConfig::default()
            },
            ..MutatingWebhook::default()
        };
        let same = MutatingWebhookConfiguration {
            webhooks: Some(vec![hook(b"a"), hook(b"a")]),
            ..MutatingWebhookConfiguration::default()
        };
        assert_eq!(first_bundle(&same), Some(b"a".to_vec()));
        let differ = MutatingWebhookConfiguration {
            webhooks: Some(vec![hook(b"a"), hook(b"b")]),
            ..MutatingWebhookConfiguration::default()
        };
        assert_eq!(first_bundle(&differ), None);
    }
}
