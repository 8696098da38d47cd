//! Built-in apps, each selected per connection by its ALPN protocol identifier.
//!
//! | name      | ALPN      | what it does                                                   |
//! |-----------|-----------|----------------------------------------------------------------|
//! | `echo`    | `echo`    | sends every bidirectional stream and datagram back ([`Echo`])  |
//! | `perf`    | `perf`    | answers each request with the bytes it asks for ([`Perf`])     |
//! | `discard` | `discard` | reads and drops everything ([`Discard`])                       |
//!
//! `quring serve --app echo,perf,discard` serves several at once.

use std::sync::Arc;

use crate::app::AppFactory;

pub mod discard;
pub mod echo;
pub mod pattern;
pub mod perf;

pub use discard::{Discard, DiscardFactory};
pub use echo::{Echo, EchoFactory};
pub use perf::{Perf, PerfFactory};

/// Names of the built-in apps, as `--app` takes them.
pub const NAMES: &[&str] = &["echo", "perf", "discard"];

/// The factory of the built-in app called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn AppFactory>> {
    match name {
        "echo" => Some(Arc::new(EchoFactory)),
        "perf" => Some(Arc::new(PerfFactory)),
        "discard" => Some(Arc::new(DiscardFactory)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_an_app_with_its_alpn() {
        for name in NAMES {
            let factory = by_name(name).expect("listed app exists");
            assert_eq!(factory.alpn(), name.as_bytes());
        }
        assert!(by_name("nosuch").is_none());
    }
}
