//! Tracing spans: a connection's span is not a child of its (finished) handshake's span, so
//! its events are not prefixed with the handshake; it is a child of the span the application
//! connected in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every span's name and its parent's name.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    names: Mutex<HashMap<u64, &'static Metadata<'static>>>,
    /// (span, parent) for every span created.
    parents: Mutex<Vec<(&'static str, Option<&'static str>)>>,
    /// The spans entered on this (single) thread, innermost last.
    stack: Mutex<Vec<u64>>,
}

/// The subscriber: a handle on [`Spans`], which the test reads afterwards.
struct Recorder(Arc<Spans>);

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let spans = &self.0;
        let id = spans.next.fetch_add(1, Ordering::Relaxed) + 1;
        let name = attrs.metadata().name();
        let names = &mut *spans.names.lock().unwrap();
        let parent = if let Some(p) = attrs.parent() {
            names.get(&p.into_u64()).map(|m| m.name())
        } else if attrs.is_contextual() {
            let stack = spans.stack.lock().unwrap();
            stack.last().and_then(|p| names.get(p)).map(|m| m.name())
        } else {
            None
        };
        names.insert(id, attrs.metadata());
        spans.parents.lock().unwrap().push((name, parent));
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn current_span(&self) -> tracing_core::span::Current {
        let names = self.0.names.lock().unwrap();
        let stack = self.0.stack.lock().unwrap();
        match stack.last().and_then(|id| Some((*id, *names.get(id)?))) {
            Some((id, meta)) => tracing_core::span::Current::new(Id::from_u64(id), meta),
            None => tracing_core::span::Current::none(),
        }
    }

    fn enter(&self, span: &Id) {
        self.0.stack.lock().unwrap().push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut stack = self.0.stack.lock().unwrap();
        if let Some(i) = stack.iter().rposition(|&s| s == span.into_u64()) {
            stack.remove(i);
        }
    }
}

#[test]
fn a_connection_span_is_a_child_of_the_applications_span_not_of_the_handshake() {
    let spans = Arc::new(Spans::default());
    tracing::subscriber::with_default(Recorder(spans.clone()), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let app = tracing::info_span!("app");
        rt.block_on(tracing::Instrument::instrument(
            async {
                let (_a, _b) = tokio_pvm::Connection::pair().await.unwrap();
            },
            app,
        ));
    });
    let parents = spans.parents.lock().unwrap().clone();
    let connections: Vec<_> = parents
        .iter()
        .filter(|(name, _)| *name == "tokio_pvm::connection")
        .collect();
    assert_eq!(connections.len(), 2, "{parents:?}");
    for (_, parent) in connections {
        assert_eq!(*parent, Some("app"), "{parents:?}");
    }
    assert!(
        parents
            .iter()
            .any(|(name, parent)| *name == "tokio_pvm::handshake" && *parent == Some("app")),
        "{parents:?}"
    );
}
