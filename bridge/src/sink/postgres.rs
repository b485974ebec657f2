//! PostgreSQL: one multi-row `INSERT ... SELECT FROM
//! json_populate_recordset(...) ON CONFLICT DO NOTHING` per batch. The
//! batch travels as one JSON parameter; PostgreSQL converts each field to
//! its column's type, so a value that does not fit (text in an integer
//! column) is refused by the database, as a permanent error, and a
//! redelivered message whose key is already there is skipped.

use serde_json::{Map, Value};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::{connect_error, full_message, BatchError, SinkError, SinkResult, Written};
use crate::config::{PostgresConnection, PostgresSink as Config, RouteConfig, TlsConfig};
use crate::message::Record;
use crate::secrets;

/// A connected (or not yet) PostgreSQL sink.
pub struct PostgresSink {
    config: Config,
    columns: Vec<String>,
    connection: Option<(Client, Statement)>,
}

/// Quotes an identifier, keeping a schema qualifier: `a.b` → `"a"."b"`.
pub fn quote(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Opens a connection, with TLS when configured.
pub async fn connect(config: &PostgresConnection) -> SinkResult<Client> {
    // libpq's verifying modes: the bridge always verifies the certificate
    // and its name, which tokio-postgres calls `require`.
    let connection = config
        .connection
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let mut pg: tokio_postgres::Config = connection
        .parse()
        .map_err(|e| SinkError::permanent(format!("bad PostgreSQL connection string: {e}")))?;
    if let Some(password) = secrets::read_optional(config.password_file.as_ref())
        .map_err(|e| SinkError::transient(e.to_string()))?
    {
        pg.password(password);
    }
    pg.connect_timeout(std::time::Duration::from_secs(10));
    let what = format!("PostgreSQL {}", address(&pg));
    // With `tls` (or `sslmode=require` in the connection string, then with
    // the system's CAs), TLS is required: never the plain-text fallback of
    // the default `sslmode=prefer`.
    let tls = match (&config.tls, pg.get_ssl_mode()) {
        (Some(tls), _) => Some(tls.clone()),
        (None, SslMode::Require) => Some(TlsConfig::default()),
        (None, _) => None,
    };
    let failed = |e: tokio_postgres::Error| connect_error(&what, &e, tls.as_ref());
    let client = match &tls {
        Some(tls) => {
            pg.ssl_mode(SslMode::Require);
            let tls_config = secrets::client_config(tls)
                .map_err(|e| SinkError::transient(format!("{what}: {e}")))?;
            let (client, connection) = pg
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config))
                .await
                .map_err(failed)?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// `host:port` of each host of a connection string, for messages.
fn address(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Transient or permanent, from the SQLSTATE: data exceptions (class 22)
/// and integrity violations (23) are the data's fault; everything else
/// (connections, a missing table being created, resources) may pass.
pub fn classify(error: tokio_postgres::Error) -> SinkError {
    let message = match error.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => format!("PostgreSQL: {}", full_message(&error)),
    };
    match error.code().map(SqlState::code) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => {
            SinkError::permanent(message)
        }
        _ => SinkError::transient(message),
    }
}

impl PostgresSink {
    /// A sink writing the route's mapped columns (or `payload`) and the key.
    pub fn new(config: Config, route: &RouteConfig) -> PostgresSink {
        let mut columns: Vec<String> = if route.map.is_empty() {
            vec!["payload".into()]
        } else {
            route.map.keys().cloned().collect()
        };
        columns.push(config.key_column.clone());
        PostgresSink {
            config,
            columns,
            connection: None,
        }
    }

    /// The connection, opened when there is none or it closed.
    pub async fn client(&mut self) -> SinkResult<&Client> {
        if self
            .connection
            .as_ref()
            .is_some_and(|(client, _)| client.is_closed())
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            let client = connect(&self.config.connection).await?;
            let columns = self
                .columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ");
            let table = quote(&self.config.table);
            let sql = format!(
                "INSERT INTO {table} ({columns}) SELECT {columns} \
                 FROM json_populate_recordset(NULL::{table}, $1::json) ON CONFLICT DO NOTHING"
            );
            let statement = client.prepare(&sql).await.map_err(classify)?;
            self.connection = Some((client, statement));
        }
        match &self.connection {
            Some((client, _)) => Ok(client),
            None => Err(SinkError::transient("not connected".into())),
        }
    }

    fn row(&self, record: &Record) -> Value {
        let mut row = match &record.fields {
            Some(fields) => fields.clone(),
            None => {
                let mut row = Map::new();
                row.insert("payload".into(), record.json());
                row
            }
        };
        row.insert(
            self.config.key_column.clone(),
            Value::String(record.key.clone()),
        );
        Value::Object(row)
    }

    /// Inserts the batch in one statement.
    pub async fn write(&mut self, batch: &[Record]) -> Result<Written, BatchError> {
        let rows = Value::Array(batch.iter().map(|r| self.row(r)).collect());
        let failed = |error| BatchError {
            committed: 0,
            error,
        };
        self.client().await.map_err(failed)?;
        let Some((client, statement)) = &self.connection else {
            return Err(failed(SinkError::transient("not connected".into())));
        };
        match client.execute(statement, &[&rows]).await {
            Ok(inserted) => Ok(Written {
                deduplicated: (batch.len() as u64).saturating_sub(inserted),
            }),
            Err(e) => {
                if client.is_closed() {
                    self.connection = None;
                }
                Err(failed(classify(e)))
            }
        }
    }

    /// Stores a refused record in the dead-letter table of this database.
    pub async fn dead_letter(
        &mut self,
        table: &str,
        route: &str,
        record: &DeadRecord<'_>,
    ) -> SinkResult<()> {
        let sql = format!(
            "INSERT INTO {} (key, route, topic, client_id, error, payload, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::float8 / 1000)) ON CONFLICT DO NOTHING",
            quote(table)
        );
        let client = self.client().await?;
        let received = record.received_at_ms as f64;
        let result = client
            .execute(
                &sql,
                &[
                    &record.key,
                    &route,
                    &record.topic,
                    &record.client_id,
                    &record.error,
                    &record.payload,
                    &received,
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                if self.connection.as_ref().is_some_and(|(c, _)| c.is_closed()) {
                    self.connection = None;
                }
                // The dead-letter table refusing is never the data's fault
                // to give up on: retry.
                Err(SinkError::transient(classify(e).message))
            }
        }
    }
}

/// What a dead-letter destination stores of a refused message.
pub struct DeadRecord<'a> {
    /// Idempotency key (or the message hash when the key could not be
    /// computed).
    pub key: String,
    /// Topic.
    pub topic: &'a str,
    /// Publisher client id.
    pub client_id: &'a str,
    /// Why it was refused.
    pub error: String,
    /// The payload as received.
    pub payload: &'a [u8],
    /// Receive time, Unix milliseconds.
    pub received_at_ms: u64,
}
