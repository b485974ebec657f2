//! `kubemqtt-broker --check-config` reads every file the configuration
//! names, as the start would, and reports each problem with its file and
//! line (exit status 3); one test per kind of file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

use common::{write_file, CertKey, TestCa};

/// Exit status of a configuration problem (see `kubemqtt-broker --help`).
const EXIT_CONFIG: i32 = 3;

struct Checked {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs `--check-config` on `config` written to `dir/broker.toml`.
fn check(dir: &Path, config: &str) -> Checked {
    let path = write_file(dir, "broker.toml", config);
    let out = Command::new(env!("CARGO_BIN_EXE_kubemqtt-broker"))
        .arg("-c")
        .arg(&path)
        .arg("--check-config")
        .output()
        .expect("run kubemqtt-broker --check-config");
    Checked {
        status: out.status.code().expect("exit status"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts exit status 3 and an error line starting with `prefix`
/// (the file and line) and containing `words`.
fn assert_problem(checked: &Checked, prefix: &str, words: &str) {
    assert_eq!(
        checked.status, EXIT_CONFIG,
        "stdout: {}\nstderr: {}",
        checked.stdout, checked.stderr
    );
    assert!(
        checked
            .stderr
            .lines()
            .any(|l| l.starts_with(&format!("Error: {prefix}")) && l.contains(words)),
        "expected `Error: {prefix}...{words}...` in:\n{}",
        checked.stderr
    );
}

/// A TLS listener requiring client certificates, with every file in `dir`.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl TlsFiles {
    fn write(dir: &Path) -> TlsFiles {
        let ca = TestCa::new("check-config CA");
        let server = ca.server_cert();
        TlsFiles {
            cert: write_file(dir, "server.crt", &server.cert_pem),
            key: write_file(dir, "server.key", &server.key_pem),
            ca: write_file(dir, "ca.crt", &ca.cert_pem),
        }
    }

    fn config(&self) -> String {
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:8883\"\nprotocol = \"tls\"\n\
             [listeners.tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n\
             client_auth = \"require\"\n",
            self.cert, self.key, self.ca
        )
    }
}

fn auth_config(passwd: &Path, creds: &Path, acl: &Path) -> String {
    format!(
        "[auth]\npassword_file = {passwd:?}\ncredentials_file = {creds:?}\nacl_file = {acl:?}\n"
    )
}

fn hash(password: &str) -> String {
    kubemqtt_broker::auth::hash_password(password).expect("hash a password")
}

/// Valid password, credentials and ACL files in `dir`.
fn auth_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let passwd = write_file(dir, "passwd", &format!("alice:{}\n", hash("a")));
    let creds = write_file(
        dir,
        "creds.toml",
        &format!(
            "[[users]]\nusername = \"bob\"\npasswords = [{{ hash = \"{}\" }}]\n",
            hash("b")
        ),
    );
    let acl = write_file(dir, "acl", "user alice\ntopic readwrite sensors/#\n");
    (passwd, creds, acl)
}

#[test]
fn every_file_valid_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::write(dir.path());
    let (passwd, creds, acl) = auth_files(dir.path());
    let token = write_file(dir.path(), "token", "s3cret\n");
    let config = format!(
        "{}{}[http]\nbind = \"127.0.0.1:8080\"\nadmin_token_file = {token:?}\n",
        tls.config(),
        auth_config(&passwd, &creds, &acl)
    );
    let checked = check(dir.path(), &config);
    assert_eq!(checked.status, 0, "{}", checked.stderr);
    assert!(
        checked.stdout.contains("configuration OK"),
        "{}",
        checked.stdout
    );
}

#[test]
fn broken_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::write(dir.path());
    let cert = tls.cert.display().to_string();

    std::fs::remove_file(&tls.cert).unwrap();
    assert_problem(&check(dir.path(), &tls.config()), &cert, "cannot read");

    // A second certificate in the chain whose body is not X.509.
    let server = TestCa::new("other").server_cert();
    write_file(
        dir.path(),
        "server.crt",
        &format!(
            "{}-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
            server.cert_pem
        ),
    );
    let line = server.cert_pem.lines().count() + 1;
    assert_problem(
        &check(dir.path(), &tls.config()),
        &format!("{cert}:{line}: "),
        "not an X.509 certificate",
    );

    write_file(dir.path(), "server.crt", "not a certificate\n");
    assert_problem(
        &check(dir.path(), &tls.config()),
        &cert,
        "holds no PEM certificate",
    );

    let expired = expired_certificate();
    write_file(dir.path(), "server.crt", &expired.cert_pem);
    write_file(dir.path(), "server.key", &expired.key_pem);
    assert_problem(
        &check(dir.path(), &tls.config()),
        &format!("{cert}:1: "),
        "certificate expired on",
    );
}

#[test]
fn broken_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::write(dir.path());
    let key = tls.key.display().to_string();

    write_file(dir.path(), "server.key", "-----BEGIN PRIVATE KEY-----\n");
    assert_problem(
        &check(dir.path(), &tls.config()),
        &key,
        "holds no usable private key",
    );

    // A valid key that belongs to another certificate.
    let other = TestCa::new("other").server_cert();
    write_file(dir.path(), "server.key", &other.key_pem);
    assert_problem(
        &check(dir.path(), &tls.config()),
        &tls.cert.display().to_string(),
        "listener tls-8883:",
    );
}

#[test]
fn broken_ca_files() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::write(dir.path());
    let ca = tls.ca.display().to_string();
    write_file(dir.path(), "ca.crt", "");
    assert_problem(
        &check(dir.path(), &tls.config()),
        &ca,
        "holds no PEM CA certificate",
    );
    std::fs::remove_file(&tls.ca).unwrap();
    assert_problem(&check(dir.path(), &tls.config()), &ca, "cannot read");
}

#[test]
fn broken_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let (passwd, creds, acl) = auth_files(dir.path());
    write_file(
        dir.path(),
        "passwd",
        &format!("alice:{}\nno-colon-here\n", hash("a")),
    );
    assert_problem(
        &check(dir.path(), &auth_config(&passwd, &creds, &acl)),
        &format!("{}:2: ", passwd.display()),
        "",
    );
}

#[test]
fn broken_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let (passwd, creds, acl) = auth_files(dir.path());
    write_file(
        dir.path(),
        "creds.toml",
        "[[users]]\nusername = \"bob\"\n\npasswords = [{ hash = \"not-a-hash\" }]\n",
    );
    assert_problem(
        &check(dir.path(), &auth_config(&passwd, &creds, &acl)),
        &format!("{}:", creds.display()),
        "",
    );
    // A user in both user files: found only when they are read together.
    write_file(
        dir.path(),
        "creds.toml",
        &format!(
            "[[users]]\nusername = \"alice\"\npasswords = [{{ hash = \"{}\" }}]\n",
            hash("a")
        ),
    );
    assert_problem(
        &check(dir.path(), &auth_config(&passwd, &creds, &acl)),
        &format!("{}:2: ", creds.display()),
        "also defined in",
    );
}

#[test]
fn broken_acl_file() {
    let dir = tempfile::tempdir().unwrap();
    let (passwd, creds, acl) = auth_files(dir.path());
    write_file(dir.path(), "acl", "user alice\ntopic sideways sensors/#\n");
    assert_problem(
        &check(dir.path(), &auth_config(&passwd, &creds, &acl)),
        &format!("{}:2: ", acl.display()),
        "",
    );
}

#[test]
fn broken_admin_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let config = format!("[http]\nbind = \"127.0.0.1:8080\"\nadmin_token_file = {token:?}\n");
    assert_problem(
        &check(dir.path(), &config),
        &token.display().to_string(),
        "cannot read the admin token file",
    );
    write_file(dir.path(), "token", "\n");
    assert_problem(
        &check(dir.path(), &config),
        &token.display().to_string(),
        "the admin token file is empty",
    );
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::write(dir.path());
    let (passwd, creds, acl) = auth_files(dir.path());
    write_file(dir.path(), "server.key", "garbage\n");
    write_file(dir.path(), "acl", "topic sideways x\n");
    let checked = check(
        dir.path(),
        &format!("{}{}", tls.config(), auth_config(&passwd, &creds, &acl)),
    );
    assert_problem(&checked, &tls.key.display().to_string(), "private key");
    assert_problem(&checked, &format!("{}:1: ", acl.display()), "");
    assert!(
        checked.stderr.contains("2 problem(s)"),
        "{}",
        checked.stderr
    );
}

#[test]
fn a_broken_broker_toml_names_its_line_with_status_3() {
    let dir = tempfile::tempdir().unwrap();
    let checked = check(dir.path(), "[limits]\nmax_inflight = \"many\"\n");
    let file = dir.path().join("broker.toml");
    assert_problem(
        &checked,
        &format!("{}:2: key `limits.max_inflight`", file.display()),
        "invalid type",
    );
}

/// A self-signed server certificate whose validity ended in 2020.
fn expired_certificate() -> CertKey {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
