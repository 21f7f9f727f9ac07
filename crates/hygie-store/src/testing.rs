//! Test support: throwaway PostgreSQL databases, so every test of every crate runs against a
//! real server, never a mock, and never skips.
//!
//! The server comes from `HYGIE_TEST_POSTGRES_URL` (set by `scripts/test`, which starts one
//! when none answers), defaulting to `postgres://postgres@127.0.0.1:5432/test`.

use postgres::{Client, NoTls};

/// The admin URL of the test server.
pub fn postgres_admin_url() -> String {
    std::env::var("HYGIE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database created for one test and dropped when this guard is dropped.
pub struct ThrowawayDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl ThrowawayDatabase {
    /// Creates a fresh, empty database. Panics with instructions when no server answers:
    /// the PostgreSQL tests must fail loudly, not skip.
    pub fn create() -> ThrowawayDatabase {
        let admin_url = postgres_admin_url();
        let name = format!("hygie_test_{}", random_suffix());
        // A plain thread: the sync client must not block on an async worker.
        let (url_for_thread, name_for_thread) = (admin_url.clone(), name.clone());
        std::thread::spawn(move || {
            let mut admin = connect_admin(&url_for_thread);
            admin
                .batch_execute(&format!("CREATE DATABASE {name_for_thread}"))
                .unwrap_or_else(|e| panic!("cannot create test database {name_for_thread}: {e}"));
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let url = replace_database(&admin_url, &name);
        ThrowawayDatabase {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for ThrowawayDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop from a plain thread: the guard may be dropped inside an async runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(mut admin) = Client::connect(&admin_url, NoTls) {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
    }
}

fn connect_admin(admin_url: &str) -> Client {
    Client::connect(admin_url, NoTls).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL tests need a server: none answered at {admin_url} ({e}). \
                 Run ./scripts/test, which starts one, or set HYGIE_TEST_POSTGRES_URL."
        )
    })
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

fn random_suffix() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// A store for one test, of either backend, with what keeps it alive (a temporary
/// directory or a throwaway database) dropped after it.
pub struct TestBackend {
    pub store: crate::SharedStore,
    _dir: Option<tempfile::TempDir>,
    _database: Option<ThrowawayDatabase>,
}

impl TestBackend {
    /// Where the store lives (for the backup tests, which read it beside the store).
    pub fn target(&self) -> crate::backup::Target {
        match (&self._dir, &self._database) {
            (_, Some(database)) => crate::backup::Target::Postgres(database.url.clone()),
            (Some(dir), None) => crate::backup::Target::Sqlite(dir.path().to_owned()),
            (None, None) => unreachable!("a test backend has a directory or a database"),
        }
    }

    /// Embedded SQLite in a fresh temporary directory.
    pub fn sqlite() -> TestBackend {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::open(None, dir.path(), &Default::default(), &Default::default())
            .expect("open SQLite");
        TestBackend {
            store,
            _dir: Some(dir),
            _database: None,
        }
    }

    /// PostgreSQL in a fresh throwaway database (opened off the async workers: the sync
    /// client blocks while it connects).
    pub fn postgres() -> TestBackend {
        let database = ThrowawayDatabase::create();
        let url = database.url.clone();
        let store = std::thread::spawn(move || {
            crate::open(
                Some(&url),
                std::path::Path::new("/nonexistent"),
                &Default::default(),
                &Default::default(),
            )
        })
        .join()
        .expect("the opening thread")
        .expect("open PostgreSQL");
        TestBackend {
            store,
            _dir: None,
            _database: Some(database),
        }
    }
}

/// Declares each named `async fn(TestBackend)` as two tests, `on_sqlite::NAME` and
/// `on_postgres::NAME`: one suite, every backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::testing::TestBackend::sqlite()).await } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::testing::TestBackend::postgres()).await } )* }
    };
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_only_the_database_name() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "x"), "postgres://h/x");
    }
}
