//! Events, off the reconcile path: notes are queued and published in order by one task, so a
//! slow Events API never delays a rollback. Events are best effort, as in Kubernetes itself.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::api::keys::EVENT_CONTROLLER;
use crate::plan::EventNote;

const QUEUE: usize = 4096;

enum Message {
    Publish(Box<(ObjectReference, Option<ObjectReference>)>, EventNote),
    Flush(oneshot::Sender<()>),
}

pub struct EventSink {
    queue: mpsc::Sender<Message>,
}

impl EventSink {
    /// Starts the publishing task. The Recorder is created once: its cache turns repeats of
    /// one Event into a series instead of new objects.
    pub fn start(client: Client, instance: Option<String>) -> Self {
        let recorder = Recorder::new(client, Reporter { controller: EVENT_CONTROLLER.into(), instance });
        let (queue, mut rx) = mpsc::channel::<Message>(QUEUE);
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
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
