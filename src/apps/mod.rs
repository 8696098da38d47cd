//! Built-in apps, each selected per connection by its ALPN protocol identifier.

use std::sync::Arc;

use crate::app::AppFactory;

mod echo;

pub use echo::{Echo, EchoFactory};

/// Names of the built-in apps, as `--app` takes them.
pub const NAMES: &[&str] = &["echo"];

/// The factory of the built-in app called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn AppFactory>> {
    match name {
        "echo" => Some(Arc::new(EchoFactory)),
        _ => None,
    }
}
