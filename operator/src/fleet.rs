//! `kubemqtt-operator fleet`: factory provisioning of fleet devices,
//! offline (no cluster): `sign` issues a device certificate with the
//! fleet's CA (the `tls.crt` and `tls.key` of Secret `<fleet>-fleet-ca`);
//! `secret` prints a device's derived secret (and, for testing, a signed
//! login) from the fleet secret (key `secret` of `<fleet>-fleet-secret`).
//! docs/fleets.md shows both at the factory.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kubemqtt_broker::auth::fleet::derived::{
    device_secret, secret_from_file_text, sign_login, MIN_SECRET_LEN,
};
use kubemqtt_operator::certs::{issue_device_cert, CertifiedKeyPem};

/// What `fleet` does.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Sign a device certificate with the fleet's CA: writes
    /// `<device>.crt` and `<device>.key` (mode 0600) into `--out`.
    Sign(SignArgs),
    /// Print a device's derived secret (what the factory writes into the
    /// device); with `--client-id`, also a password it would log in with.
    Secret(SecretArgs),
}

/// Options of `fleet sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The fleet CA's certificate (PEM; `tls.crt` of `<fleet>-fleet-ca`).
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// The fleet CA's private key (PEM; `tls.key` of `<fleet>-fleet-ca`).
    #[arg(long)]
    pub ca_key: PathBuf,
    /// The device id: the certificate's common name.
    #[arg(long)]
    pub device: String,
    /// Also a DNS subject alternative name (fleets with deviceIdFrom: san).
    #[arg(long)]
    pub san: Option<String>,
    /// Validity in days (never past the CA's own). Default: 3650.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// Where to write the files. Default: the current directory.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

/// Options of `fleet secret`.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// A file with the fleet secret (`secret` of `<fleet>-fleet-secret`);
    /// a trailing newline is ignored.
    #[arg(long)]
    pub secret_file: PathBuf,
    /// The device id.
    #[arg(long)]
    pub device: String,
    /// Print a signed login password for this client id too.
    #[arg(long)]
    pub client_id: Option<String>,
    /// The login's time, Unix seconds. Default: now.
    #[arg(long)]
    pub timestamp: Option<u64>,
}

/// Runs a `fleet` command; returns what to print.
pub fn run(command: FleetCommand) -> Result<String, String> {
    match command {
        FleetCommand::Sign(args) => sign(&args, Timestamp::now()),
        FleetCommand::Secret(args) => secret(&args, Timestamp::now()),
    }
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn sign(args: &SignArgs, now: Timestamp) -> Result<String, String> {
    let ca = CertifiedKeyPem {
        cert_pem: read(&args.ca_cert)?,
        key_pem: read(&args.ca_key)?,
    };
    let validity = SignedDuration::from_hours(24 * i64::from(args.days));
    let device = issue_device_cert(&ca, &args.device, args.san.as_deref(), now, validity)
        .map_err(|e| format!("cannot sign: {e}"))?;
    let cert = args.out.join(format!("{}.crt", args.device));
    let key = args.out.join(format!("{}.key", args.device));
    let write = |path: &PathBuf, text: &str, mode: u32| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&key, &device.key_pem, 0o600)?;
    write(&cert, &device.cert_pem, 0o644)?;
    Ok(format!("{}\n{}\n", cert.display(), key.display()))
}

fn secret(args: &SecretArgs, now: Timestamp) -> Result<String, String> {
    let text = std::fs::read(&args.secret_file)
        .map_err(|e| format!("cannot read {}: {e}", args.secret_file.display()))?;
    let fleet_secret = secret_from_file_text(&text);
    if fleet_secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{}: a fleet secret has at least {MIN_SECRET_LEN} bytes",
            args.secret_file.display()
        ));
    }
    let secret = device_secret(fleet_secret, &args.device);
    let mut out = format!("{secret}\n");
    if let Some(client_id) = &args.client_id {
        let timestamp = args
            .timestamp
            .unwrap_or_else(|| now.as_second().max(0) as u64);
        out.push_str(&sign_login(&secret, client_id, &args.device, timestamp));
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubemqtt_operator::certs::{common_name, generate_ca, is_signed_by};

    fn now() -> Timestamp {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn sign_writes_a_certificate_of_the_fleet_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca("f CA", now(), SignedDuration::from_hours(24 * 365)).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), &ca.key_pem).unwrap();
        let args = SignArgs {
            ca_cert: dir.path().join("ca.crt"),
            ca_key: dir.path().join("ca.key"),
            device: "dev-7".into(),
            san: Some("dev-7.sensors".into()),
            days: 30,
            out: dir.path().to_owned(),
        };
        let printed = sign(&args, now()).unwrap();
        assert!(printed.contains("dev-7.crt") && printed.contains("dev-7.key"));
        let cert = std::fs::read_to_string(dir.path().join("dev-7.crt")).unwrap();
        assert_eq!(common_name(&cert).as_deref(), Some("dev-7"));
        assert!(is_signed_by(&cert, &ca.cert_pem));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("dev-7.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let missing = SignArgs {
            ca_key: dir.path().join("nope"),
            ..args
        };
        assert!(sign(&missing, now()).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn secret_prints_what_the_broker_derives() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "a fleet secret of 32 bytes or more\n").unwrap();
        let args = SecretArgs {
            secret_file: file.clone(),
            device: "dev-7".into(),
            client_id: Some("c-7".into()),
            timestamp: Some(1_800_000_000),
        };
        let printed = secret(&args, now()).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        let expected = device_secret(b"a fleet secret of 32 bytes or more", "dev-7");
        assert_eq!(lines[0], expected);
        assert_eq!(
            lines[1],
            sign_login(&expected, "c-7", "dev-7", 1_800_000_000)
        );
        std::fs::write(&file, "short").unwrap();
        assert!(secret(&args, now()).unwrap_err().contains("at least 32"));
    }
}
