//! The master's gRPC edge: the `Scheduler` service for frameworks and the `AgentService` for agents.
//! Each converts wire messages to domain types, hands them to the [`MasterHandle`], and turns the
//! connection's domain messages back into wire messages.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::MasterHandle;
use crate::api::{AgentInfo, AgentMessage, AgentTask, Call, FileChunk};
use crate::audit::Audit;
use crate::auth::{Action, Auth, AuthError, Principal};
use crate::convert::{self, ConvertError};
use crate::ids::FrameworkId;
use crate::proto;
use crate::store::{AuditRecord, now_millis};

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;
type MasterMessageStream = Pin<Box<dyn Stream<Item = Result<proto::MasterMessage, Status>> + Send>>;

/// Checks the `authorization` metadata of every stream as it opens, and hands the principal to the
/// service in the request's extensions.
#[derive(Clone)]
pub struct Authenticate(pub Auth);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req.metadata().get("authorization").map(|v| v.to_str().unwrap_or("?"));
        match self.0.check(presented) {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Ok(req)
            }
            Err(e @ AuthError::Unavailable(_)) => Err(Status::unavailable(e.to_string())),
            Err(e) => Err(Status::unauthenticated(e.to_string())),
        }
    }
}

/// The principal [`Authenticate`] found; `None` when auth is off.
fn principal<T>(request: &Request<T>) -> Arc<Principal> {
    request.extensions().get::<Arc<Principal>>().cloned().unwrap_or_else(|| Arc::new(Principal::anonymous()))
}

/// The name bound to the ids a principal creates, or `None` when auth is off (nothing is bound).
fn owner(auth_off: bool, p: &Principal) -> Option<super::Caller> {
    (!auth_off).then(|| super::Caller { name: p.name.clone(), admin: p.role == crate::auth::Role::Admin })
}

fn audit(audit: &Audit, p: &Principal, action: &str, target: &str, result: &Result<(), Status>) {
    let outcome = match result {
        Ok(()) => "ok",
        Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated) => "denied",
        Err(_) => "failed",
    };
    audit.record(AuditRecord {
        at: now_millis(),
        principal: p.name.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        status: 0,
    });
}

/// Serves `keel.v1.Scheduler`.
#[derive(Clone)]
pub struct SchedulerService {
    master: MasterHandle,
    auth_off: bool,
    audit: Audit,
}

impl SchedulerService {
    pub fn new(master: MasterHandle) -> Self {
        SchedulerService { master, auth_off: true, audit: Audit::log_only() }
    }

    /// With auth: subscriptions are checked against the principal and bound to it, and audited.
    pub fn with_auth(master: MasterHandle, auth: &Auth, audit: Audit) -> Self {
        SchedulerService { master, auth_off: auth.is_off(), audit }
    }
}

#[tonic::async_trait]
impl proto::scheduler_server::Scheduler for SchedulerService {
    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<Streaming<proto::Call>>) -> Result<Response<EventStream>, Status> {
        let who = principal(&request);
        let mut calls = request.into_inner();
        let first =
            calls.message().await?.ok_or_else(|| Status::invalid_argument("the stream closed before SUBSCRIBE"))?;
        let (framework_id, info) = convert::subscribe_from_proto(first)?;
        let target = framework_id.as_ref().map_or_else(|| format!("new framework {}", info.name), |f| f.to_string());
        if !who.may(&Action::Subscribe(&info.role)) {
            let refused = Status::permission_denied(format!(
                "'{}' (role {}) may not subscribe a framework in role '{}'",
                who.name, who.role, info.role
            ));
            audit(&self.audit, &who, "subscribe", &target, &Err(refused.clone()));
            return Err(refused);
        }
        let subscribed = self.master.subscribe(framework_id, info, owner(self.auth_off, &who)).await;
        let result = subscribed.as_ref().map(|_| ()).map_err(|e| Status::from(clone_err(e)));
        audit(&self.audit, &who, "subscribe", &target, &result);
        let sub = subscribed?;
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
    auth_off: bool,
    audit: Audit,
}

impl AgentService {
    pub fn new(master: MasterHandle) -> Self {
        AgentService { master, auth_off: true, audit: Audit::log_only() }
    }

    /// With auth: registrations are checked against the principal and bound to it, and audited.
    pub fn with_auth(master: MasterHandle, auth: &Auth, audit: Audit) -> Self {
        AgentService { master, auth_off: auth.is_off(), audit }
    }
}

/// A copy of a master error for the audit record (the error itself goes to the caller).
fn clone_err(e: &super::MasterError) -> super::MasterError {
    use super::MasterError as E;
    match e {
        E::Forbidden(m) => E::Forbidden(m.clone()),
        E::Invalid(m) => E::Invalid(m.clone()),
        E::NotFound(m) => E::NotFound(m.clone()),
        other => E::Unavailable(other.to_string()),
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
        let who = principal(&request);
        if !who.may(&Action::RegisterAgent) {
            let refused =
                Status::permission_denied(format!("'{}' (role {}) may not register agents", who.name, who.role));
            audit(&self.audit, &who, "register agent", "-", &Err(refused.clone()));
            return Err(refused);
        }
        let mut incoming = request.into_inner();
        let first =
            incoming.message().await?.ok_or_else(|| Status::invalid_argument("the stream closed before register"))?;
        let Some(Kind::Register(register)) = first.kind else {
            return Err(Status::invalid_argument("the first agent message must be register"));
        };
        let info: AgentInfo = register.info.ok_or(ConvertError::Missing("register.info"))?.try_into()?;
        let tasks = register.tasks.into_iter().map(AgentTask::try_from).collect::<Result<Vec<_>, _>>()?;
        let target = info.id.as_ref().map_or_else(|| format!("new agent on {}", info.hostname), |a| a.to_string());
        let registered = self.master.register_agent(info, tasks, owner(self.auth_off, &who)).await;
        if registered.is_err() || target.starts_with("new agent") {
            let result = registered.as_ref().map(|_| ()).map_err(|e| Status::from(clone_err(e)));
            audit(&self.audit, &who, "register agent", &target, &result);
        }
        let session = registered?;
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
