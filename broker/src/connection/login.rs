//! Who the client is: a device of a fleet, a user named by its verified
//! certificate, or CONNECT's user name and password; then the user's
//! quotas and a slot in its connection quota. [`login`] decides; a
//! refusal is counted and logged here.

use std::time::SystemTime;

use crate::access::UserSlot;
use crate::auth::fleet::{
    FleetDevice, FleetLogin, LoginRefused, LoginRequest, Refused, TopicAction,
};
use crate::auth::{LoginError, UserQuotas};
use crate::broker::Broker;
use crate::codec::{Connect, ReasonCode};

use super::refusal::Refusal;
use super::Peer;

/// A client let in by [`login`]: who it is and what it may use.
pub(super) struct Login {
    /// The fleet device it is, when a fleet claimed it.
    pub device: Option<FleetDevice>,
    /// The user it is (a device's user name, a certificate's, CONNECT's).
    pub username: Option<String>,
    /// The user was named by a verified client certificate.
    pub cert_authenticated: bool,
    pub quotas: UserQuotas,
    /// Its place in the user's connection quota, held while connected.
    pub user_slot: Option<UserSlot>,
}

/// Authenticates the client of `connect` and takes a slot in its user's
/// connection quota. A refusal is counted in the metrics and logged.
pub(super) async fn login(
    broker: &Broker,
    peer: &Peer,
    connect: &Connect,
) -> Result<Login, Refusal> {
    // Who is this? A device of a fleet, when a fleet claims its
    // certificate or user name (the fleet then decides); else a verified
    // client certificate names the user when the listener says so;
    // otherwise CONNECT's user name and password.
    let device = fleet_login(broker, peer, connect).await?;
    let (username, cert_authenticated) = match (&device, &peer.cert_username) {
        (Some(device), _) => (Some(device.username.to_string()), device.by_certificate),
        (None, Some(name)) => (Some(name.clone()), true),
        (None, None) => (connect.username.clone(), false),
    };
    let checked = match (&username, cert_authenticated) {
        _ if device.is_some() => Ok(()),
        (Some(name), true) if !broker.access.certificate_user_allowed(name) => {
            Err((ReasonCode::NOT_AUTHORIZED, "unknown_user"))
        }
        (_, true) => Ok(()),
        (_, false) => authenticate(broker, username.as_deref(), connect),
    };
    if let Err((reason, label)) = checked {
        broker
            .metrics
            .auth_failures
            .with_label_values(&[label])
            .inc();
        if let Some(name) = &username {
            broker.logger.info(&format!(
                "Login refused for user {name} from {}: {}.",
                peer.addr,
                label.replace('_', " ")
            ));
        }
        return Err(Refusal::not_authorised(reason, ""));
    }
    let quotas = match &device {
        Some(device) => broker.access.fleets().quotas(device),
        None => username
            .as_deref()
            .and_then(|name| broker.access.authenticator().quotas(name).copied())
            .unwrap_or_default(),
    };
    let user_slot = match &username {
        Some(name) => {
            let max = quotas.connections.map(|n| n.get());
            let slot = match &device {
                Some(device) => {
                    let online = broker
                        .metrics
                        .fleets
                        .online
                        .with_label_values(&[&device.fleet]);
                    broker.access.acquire_device_slot(device, max, online)
                }
                None => broker.access.acquire_user_slot(name, max),
            };
            match slot {
                Some(slot) => Some(slot),
                None => {
                    broker
                        .metrics
                        .quota_refusals
                        .with_label_values(&["connections"])
                        .inc();
                    if let Some(device) = &device {
                        broker
                            .metrics
                            .fleets
                            .logins
                            .with_label_values(&[&device.fleet, "quota"])
                            .inc();
                    }
                    return Err(Refusal::not_authorised(
                        ReasonCode::QUOTA_EXCEEDED,
                        "connection quota of this user reached",
                    ));
                }
            }
        }
        None => None,
    };
    Ok(Login {
        device,
        username,
        cert_authenticated,
        quotas,
        user_slot,
    })
}

/// Checks CONNECT's credentials. Err carries the CONNACK reason and the
/// metrics label of the refusal.
fn authenticate(
    broker: &Broker,
    username: Option<&str>,
    connect: &Connect,
) -> Result<(), (ReasonCode, &'static str)> {
    let Some(name) = username else {
        return if broker.config().allow_anonymous {
            Ok(())
        } else {
            Err((ReasonCode::NOT_AUTHORIZED, "anonymous"))
        };
    };
    if !broker.access.has_user_files() {
        // No users are configured: a user name means nothing, and the
        // client counts as anonymous.
        return if broker.config().allow_anonymous {
            Ok(())
        } else {
            Err((ReasonCode::NOT_AUTHORIZED, "no_users"))
        };
    }
    let password = connect.password.as_deref().unwrap_or(&[]);
    broker
        .access
        .authenticator()
        .authenticate(name, password, SystemTime::now())
        .map_err(|e| {
            let label = match e {
                LoginError::UnknownUser => "unknown_user",
                LoginError::BadPassword => "bad_password",
                LoginError::Expired => "password_expired",
            };
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, label)
        })
}

/// Asks the fleets whether the client is one of their devices and, if so,
/// whether it is let in (a device of a hook fleet needs its will's topic
/// allowed too). Ok(None): not a fleet device. A refusal is counted per
/// fleet and reason, and logged with what went wrong.
async fn fleet_login(
    broker: &Broker,
    peer: &Peer,
    connect: &Connect,
) -> Result<Option<FleetDevice>, Refusal> {
    let fleets = broker.access.fleets();
    let request = LoginRequest {
        certificates: peer.client_certificates.as_deref(),
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        client_id: &connect.client_id,
        peer: peer.addr,
    };
    let refused = match fleets.login(&request).await {
        FleetLogin::NotAFleetDevice => return Ok(None),
        FleetLogin::Accepted(device) => {
            let Some(will) = &connect.will else {
                return Ok(Some(device));
            };
            let action = TopicAction::Publish;
            if fleets
                .allows(&device, &connect.client_id, action, &will.topic)
                .await
            {
                return Ok(Some(device));
            }
            LoginRefused {
                fleet: device.fleet.clone(),
                reason: Refused::Denied,
                detail: format!("the registry does not allow the will topic {}", will.topic),
            }
        }
        FleetLogin::Refused(refused) => refused,
    };
    broker
        .metrics
        .fleets
        .refused(&refused.fleet, refused.reason);
    let detail: String = refused.detail.chars().take(300).collect();
    broker.logger.info(&format!(
        "Login refused for fleet {} from {}: {} ({detail}).",
        refused.fleet,
        peer.addr,
        refused.reason.label().replace('_', " "),
    ));
    Err(Refusal::not_authorised(refused.reason.reason_code(), ""))
}
