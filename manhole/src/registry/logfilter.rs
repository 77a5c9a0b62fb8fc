//! The application's log filter as a registered value: `log_filter` over a `tracing-subscriber`
//! reload handle to an `EnvFilter` (feature `tracing`), `log_level` over the `log` crate's
//! `max_level` (feature `log`).
//!
//! Both are [`Local::settable_fn`] values: `get` shows the filter as it is now, `set` parses the
//! new one first and changes nothing when it does not parse, so a typo never turns logging off.

use crate::local::Local;
use crate::registry::{Registration, register};

#[cfg(feature = "tracing")]
impl Local {
    /// The directives of a [`tracing_subscriber::EnvFilter`] behind a reload handle: `get` shows
    /// them in the filter's own order, most specific first (`myapp=debug,info`), `set` parses new
    /// ones (`info,myapp=debug`) and swaps them in live. Directives that do
    /// not parse are refused with the parser's reason and the old filter stays.
    ///
    /// ```
    /// use tracing_subscriber::{EnvFilter, prelude::*, reload};
    /// let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
    /// tracing_subscriber::registry().with(filter).init();
    /// let _registration = manhole::register("log_filter", manhole::Local::log_filter(handle));
    /// ```
    ///
    /// [`register_log_filter`] does the same in one call.
    pub fn log_filter<S: 'static>(
        handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
    ) -> Local {
        let reader = handle.clone();
        Local::settable_fn(
            move || {
                reader
                    .with_current(|filter| filter.to_string())
                    .unwrap_or_else(|e| format!("(no filter: {e})"))
            },
            move |text| {
                let directives = text.trim();
                let filter = tracing_subscriber::EnvFilter::builder()
                    .parse(directives)
                    .map_err(|e| format!("invalid filter {directives:?}: {e}"))?;
                let shown = filter.to_string();
                handle
                    .reload(filter)
                    .map_err(|e| format!("cannot change the filter: {e}"))?;
                Ok(shown)
            },
        )
    }
}

/// Registers `log_filter` over a reload handle to the application's `EnvFilter`; see
/// [`Local::log_filter`].
///
/// ```
/// use tracing_subscriber::{EnvFilter, prelude::*, reload};
/// let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
/// tracing_subscriber::registry()
///     .with(filter)
///     .with(tracing_subscriber::fmt::layer())
///     .init();
/// manhole::register_log_filter(handle).forget();
/// // In a session: `get log_filter`, `set log_filter info,myapp=debug`.
/// ```
#[cfg(feature = "tracing")]
pub fn register_log_filter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> Registration {
    register("log_filter", Local::log_filter(handle))
}

#[cfg(feature = "log")]
impl Local {
    /// The `log` crate's global maximum level: `get` shows [`log::max_level`] (`info`), `set`
    /// takes `off`, `error`, `warn`, `info`, `debug` or `trace` (any case) and calls
    /// [`log::set_max_level`]. Anything else is refused and the level stays.
    ///
    /// This is the level above which `log` macros skip a record; the logger itself may filter
    /// more.
    pub fn log_level() -> Local {
        Local::settable_fn(
            || log::max_level().as_str().to_ascii_lowercase(),
            |text| {
                let level: log::LevelFilter = text.trim().parse().map_err(|_| {
                    format!(
                        "invalid level {:?}: expected off, error, warn, info, debug or trace",
                        crate::registry::shorten(text.trim())
                    )
                })?;
                log::set_max_level(level);
                Ok(level.as_str().to_ascii_lowercase())
            },
        )
    }
}

/// Registers `log_level` over the `log` crate's maximum level; see [`Local::log_level`].
///
/// ```
/// manhole::register_log_level().forget();
/// // In a session: `get log_level`, `set log_level debug`.
/// ```
#[cfg(feature = "log")]
pub fn register_log_level() -> Registration {
    register("log_level", Local::log_level())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::Access;

    const ACCESS: Access = Access {
        lock_timeout: std::time::Duration::from_millis(20),
    };

    #[cfg(feature = "tracing")]
    #[test]
    fn log_filter_changes_the_filter_live_and_keeps_it_on_a_bad_directive() {
        use tracing_subscriber::{EnvFilter, prelude::*, reload};
        let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
        let subscriber = tracing_subscriber::registry().with(filter);
        let local = Local::log_filter(handle);
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(local.read(ACCESS).unwrap(), "info");
            assert!(!tracing::enabled!(tracing::Level::DEBUG));
            assert_eq!(
                local.set("info,myapp=debug", ACCESS).unwrap(),
                ("info".into(), "myapp=debug,info".into())
            );
            assert!(tracing::enabled!(target: "myapp", tracing::Level::DEBUG));
            let refused = local.set("info,myapp=loud", ACCESS).unwrap_err();
            assert!(
                refused.starts_with("invalid filter \"info,myapp=loud\""),
                "{refused}"
            );
            assert!(!refused.contains('\n'), "{refused}");
            assert_eq!(local.read(ACCESS).unwrap(), "myapp=debug,info");
            assert!(tracing::enabled!(target: "myapp", tracing::Level::DEBUG));
        });
    }

    #[cfg(feature = "log")]
    #[test]
    fn log_level_maps_to_the_log_crates_max_level() {
        let local = Local::log_level();
        log::set_max_level(log::LevelFilter::Info);
        assert_eq!(local.read(ACCESS).unwrap(), "info");
        assert_eq!(
            local.set("DEBUG", ACCESS).unwrap(),
            ("info".into(), "debug".into())
        );
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        let refused = local.set("loud", ACCESS).unwrap_err();
        assert!(refused.starts_with("invalid level \"loud\""), "{refused}");
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
    }
}
