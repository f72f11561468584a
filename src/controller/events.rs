//! Events, off the reconcile path: notes are queued and published in order by one task, so a
//! slow Events API never delays a rollback. Events are best effort, as in Kubernetes itself.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::api::keys::EVENT_CONTROLLER;
use crate::plan::EventNote;

const QUEUE: usize = 4096;
/// How long kube's Recorder keeps an Event to make a series of its repeats.
const RECORDER_CACHE_TTL: Duration = Duration::from_secs(6 * 60);

enum Message {
    Publish(Box<(ObjectReference, Option<ObjectReference>)>, EventNote),
    Flush(oneshot::Sender<()>),
}

pub struct EventSink {
    queue: mpsc::Sender<Message>,
}

impl EventSink {
    /// Starts the publishing task. One Recorder at a time: its cache turns repeats of one
    /// Event into a series instead of new objects.
    pub fn start(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: EVENT_CONTROLLER.into(), instance };
        let (queue, mut rx) = mpsc::channel::<Message>(QUEUE);
        tokio::spawn(async move {
            let mut recorder = Recorder::new(client.clone(), reporter.clone());
            let mut published = false;
            loop {
                let message = match tokio::time::timeout(RECORDER_CACHE_TTL, rx.recv()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    // kube prunes the Recorder's cache only when it publishes, so after a burst
                    // (a wave of deleted Agents) its Events would stay for as long as all is
                    // quiet. Idle for the cache's lifetime, every entry has expired: a new
                    // Recorder behaves the same and frees them.
                    Err(_idle) => {
                        if std::mem::take(&mut published) {
                            recorder = Recorder::new(client.clone(), reporter.clone());
                        }
                        continue;
                    }
                };
                match message {
                    Message::Publish(references, note) => {
                        let (reference, related) = *references;
                        let event = Event {
                            type_: if note.warning { EventType::Warning } else { EventType::Normal },
                            reason: note.reason.into(),
                            note: Some(truncate(note.note, 1000)),
                            action: note.action.into(),
                            secondary: related,
                        };
                        published = true;
                        if let Err(error) = recorder.publish(&event, &reference).await {
                            warn!(reason = note.reason, object = ?reference.name, error = %error, "Failed to publish Event");
                        }
                    }
                    Message::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self { queue }
    }

    /// Queues an Event; drops it (with a warning) when the queue is full.
    pub fn send(&self, reference: ObjectReference, related: Option<ObjectReference>, note: EventNote) {
        if let Err(error) = self.queue.try_send(Message::Publish(Box::new((reference, related)), note)) {
            warn!(error = %error, "Dropped an Event: queue full");
        }
    }

    /// Waits until every Event queued so far was published (on shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
