//! The master's gRPC edge: the `Scheduler` service for frameworks and the `AgentService` for agents.
//! Each converts wire messages to domain types, hands them to the [`MasterHandle`], and turns the
//! connection's domain messages back into wire messages.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::MasterHandle;
use crate::api::{AgentInfo, AgentMessage, AgentTask, Call, FileChunk};
use crate::convert::{self, ConvertError};
use crate::ids::FrameworkId;
use crate::proto;

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;
type MasterMessageStream = Pin<Box<dyn Stream<Item = Result<proto::MasterMessage, Status>> + Send>>;

/// Serves `keel.v1.Scheduler`.
#[derive(Clone)]
pub struct SchedulerService {
    master: MasterHandle,
}

impl SchedulerService {
    pub fn new(master: MasterHandle) -> Self {
        SchedulerService { master }
    }
}

#[tonic::async_trait]
impl proto::scheduler_server::Scheduler for SchedulerService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<Streaming<proto::Call>>) -> Result<Response<EventStream>, Status> {
        let mut calls = request.into_inner();
        let first =
            calls.message().await?.ok_or_else(|| Status::invalid_argument("the stream closed before SUBSCRIBE"))?;
        let (framework_id, info) = convert::subscribe_from_proto(first)?;
        let sub = self.master.subscribe(framework_id, info).await?;
        let (fid, conn_id) = (sub.framework_id.clone(), sub.conn_id);
        let master = self.master.clone();
        tokio::spawn(async move {
            loop {
                match calls.message().await {
                    Ok(Some(call)) => {
                        let sent = match check_framework(&fid, &call)
                            .and_then(|()| Call::try_from(call).map_err(|e| e.to_string()))
                        {
                            Ok(call) => master.call(fid.clone(), conn_id, call).await,
                            Err(message) => master.call_error(fid.clone(), conn_id, message).await,
                        };
                        if sent.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(framework_id = %fid, %status, "framework stream failed");
                        break;
                    }
                }
            }
            master.framework_disconnected(fid, conn_id).await;
        });
        let events = ReceiverStream::new(sub.events).map(|e| Ok(proto::Event::from(&e)));
        Ok(Response::new(Box::pin(events)))
    }
}

/// Calls name their framework; one that names another is refused rather than acted on.
fn check_framework(fid: &FrameworkId, call: &proto::Call) -> Result<(), String> {
    if !call.framework_id.is_empty() && call.framework_id != fid.as_str() {
        return Err(format!("call names framework {} but this stream belongs to {fid}", call.framework_id));
    }
    Ok(())
}

/// Serves `keel.v1.AgentService`.
#[derive(Clone)]
pub struct AgentService {
    master: MasterHandle,
}

impl AgentService {
    pub fn new(master: MasterHandle) -> Self {
        AgentService { master }
    }
}

#[tonic::async_trait]
impl proto::agent_service_server::AgentService for AgentService {
    type AttachStream = MasterMessageStream;

    async fn attach(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<MasterMessageStream>, Status> {
        use proto::agent_message::Kind;
        let mut incoming = request.into_inner();
        let first =
            incoming.message().await?.ok_or_else(|| Status::invalid_argument("the stream closed before register"))?;
        let Some(Kind::Register(register)) = first.kind else {
            return Err(Status::invalid_argument("the first agent message must be register"));
        };
        let info: AgentInfo = register.info.ok_or(ConvertError::Missing("register.info"))?.try_into()?;
        let tasks = register.tasks.into_iter().map(AgentTask::try_from).collect::<Result<Vec<_>, _>>()?;
        let session = self.master.register_agent(info, tasks).await?;
        let (agent_id, conn_id) = (session.agent_id.clone(), session.conn_id);
        let master = self.master.clone();
        tokio::spawn(async move {
            loop {
                let msg = match incoming.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(agent_id = %agent_id, %status, "agent stream failed");
                        break;
                    }
                };
                let converted = match msg.kind {
                    Some(Kind::Heartbeat(_)) => Ok(AgentMessage::Heartbeat),
                    Some(Kind::StatusUpdate(u)) => (|| {
                        Ok::<_, ConvertError>(AgentMessage::StatusUpdate {
                            framework_id: FrameworkId::parse(u.framework_id)?,
                            status: u.status.ok_or(ConvertError::Missing("status"))?.try_into()?,
                        })
                    })(),
                    Some(Kind::FileData(f)) => Ok(AgentMessage::FileData {
                        request_id: f.request_id,
                        chunk: if f.error.is_empty() {
                            Ok(FileChunk {
                                data: String::from_utf8_lossy(&f.data).into_owned(),
                                offset: f.offset,
                                size: f.size,
                            })
                        } else {
                            Err(f.error)
                        },
                    }),
                    Some(Kind::Register(_)) => Err(ConvertError::Missing("a new stream to register again")),
                    None => Err(ConvertError::Missing("message kind")),
                };
                match converted {
                    Ok(m) => {
                        if master.agent_message(agent_id.clone(), conn_id, m).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => warn!(agent_id = %agent_id, error = %e, "malformed agent message ignored"),
                }
            }
            master.agent_disconnected(agent_id, conn_id).await;
        });
        let out = ReceiverStream::new(session.messages).map(|m| Ok(proto::MasterMessage::from(&m)));
        Ok(Response::new(Box::pin(out)))
    }
}
