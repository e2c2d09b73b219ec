//! Wiring flows from `[ai]` and `[[flows]]`: the AI client, the runner and its worker on the
//! `flows` queue, the consumer that starts flows from webhook sources, and the schedules.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raccordo_ai::AiClient;
use raccordo_core::{Clock, Completion, RawEvent, RetryPolicy, Stores, WorkItem};
use raccordo_flows::jobs::CallbackSender;
use raccordo_flows::{CrmClients, FlowRunner, Flows, Services, TriggerConfig, derived_run_id};
use raccordo_runtime::consumer::{LogConsumer, run_consumer};
use raccordo_runtime::{Supervisor, Worker, run_worker};

use crate::config::Config;

/// Steps of different runs run side by side, up to this many at once.
const CONCURRENT_STEPS: usize = 16;

struct FlowWorker(Arc<FlowRunner>);

#[async_trait]
impl Worker for FlowWorker {
    fn queue(&self) -> &'static str {
        raccordo_flows::QUEUE
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }
    fn retry_policy_for(&self, item: &WorkItem) -> RetryPolicy {
        self.0.retry_policy(item)
    }
    async fn process(&self, item: &WorkItem) -> Completion {
        self.0.process(item).await
    }
    fn batch_size(&self) -> usize {
        CONCURRENT_STEPS
    }
    // Items of one batch belong to different runs (one item per run is handed out at a
    // time), so they can run concurrently: a slow model call does not hold up other runs.
    async fn process_batch(&self, items: &[WorkItem]) -> Vec<Completion> {
        futures_util::future::join_all(items.iter().map(|item| self.0.process(item))).await
    }
}

/// Sends jobs' completion webhooks (signed, retried on the queue; redirects not followed,
/// so a signed body never goes to another host).
struct CallbackWorker(Arc<CallbackSender>);

#[async_trait]
impl Worker for CallbackWorker {
    fn queue(&self) -> &'static str {
        raccordo_flows::jobs::CALLBACK_QUEUE
    }
    fn retry_policy(&self) -> RetryPolicy {
        CallbackSender::retry_policy()
    }
    async fn process(&self, item: &WorkItem) -> Completion {
        self.0.deliver(item).await
    }
}

/// Starts the flows of each accepted event of a webhook source. A run's id derives from
/// the flow and the event id, so a page read again after a crash starts nothing twice.
struct SourceTrigger(Arc<FlowRunner>);

#[async_trait]
impl LogConsumer for SourceTrigger {
    fn name(&self) -> &str {
        "flows"
    }
    async fn handle(&self, events: &[RawEvent]) -> anyhow::Result<()> {
        for event in events.iter().filter(|e| !e.duplicate) {
            let flows: Vec<String> = self
                .0
                .flows()
                .for_source(event.source.as_str())
                .map(|f| f.name.clone())
                .collect();
            if flows.is_empty() {
                continue;
            }
            let payload: serde_json::Value =
                serde_json::from_str(&event.payload).unwrap_or(serde_json::Value::Null);
            for flow in flows {
                let id = derived_run_id(&flow, &event.id.to_string());
                match self.0.start(&flow, payload.clone(), Some(id)).await {
                    Ok(_) => {}
                    // An event the flow's schema refuses starts nothing; the log says why.
                    Err(raccordo_flows::StartError::InvalidInput { pointer, message }) => {
                        metrics::counter!("raccordo_flow_inputs_refused_total", "flow" => flow.clone()).increment(1);
                        tracing::warn!(flow = %flow, event = %event.id.to_string(), pointer = %pointer, reason = %message, "event does not match the flow's input schema; no run");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

/// Builds the runner and starts its background work; `None` when no flow is configured.
pub async fn start(
    config: &Config,
    flows: Flows,
    stores: &Stores,
    clock: Arc<dyn Clock>,
    supervisor: &Supervisor,
    crm: CrmClients,
) -> anyhow::Result<Option<Arc<FlowRunner>>> {
    if flows.is_empty() {
        return Ok(None);
    }
    let outbound = config.outbound_policy();
    let ai = if config.ai.providers.is_empty() {
        None
    } else {
        Some(Arc::new(AiClient::new(
            config.ai.providers(),
            stores.cache.clone(),
            config.ai.cache_ttl,
            stores.rate_limits.clone(),
            clock.clone(),
            &outbound,
        )?))
    };
    let services = Arc::new(Services::new(
        ai,
        Arc::new(crm),
        &outbound,
        clock.clone(),
        stores.kv.clone(),
    )?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let runner = Arc::new(FlowRunner::new(
        flows.clone(),
        services,
        stores,
        clock.clone(),
        wake.clone(),
    ));
    if let Some(secret) = &config.jobs.callback_secret {
        let sender = Arc::new(CallbackSender {
            runs: stores.runs.clone(),
            secret: raccordo_notify::signer::WebhookSecret::parse(secret)
                .map_err(anyhow::Error::msg)?,
            http: raccordo_outbound::client_builder(&outbound, raccordo_outbound::Redirects::Never)
                .timeout(Duration::from_secs(15))
                .build()?,
            outbound: outbound.clone(),
            clock: clock.clone(),
        });
        let worker: Arc<dyn Worker> = Arc::new(CallbackWorker(sender));
        let (queue, clock) = (stores.queue.clone(), clock.clone());
        let wake = Arc::new(tokio::sync::Notify::new());
        supervisor.spawn("job-callbacks", move |ctx| {
            run_worker(
                worker.clone(),
                queue.clone(),
                clock.clone(),
                wake.clone(),
                ctx,
            )
        });
    }
    {
        let worker: Arc<dyn Worker> = Arc::new(FlowWorker(runner.clone()));
        let (queue, clock) = (stores.queue.clone(), clock.clone());
        supervisor.spawn("flow-steps", move |ctx| {
            run_worker(
                worker.clone(),
                queue.clone(),
                clock.clone(),
                wake.clone(),
                ctx,
            )
        });
    }
    if flows
        .iter()
        .any(|f| matches!(f.trigger, TriggerConfig::Webhook { .. }))
    {
        // The first time, start at the log's head: configuring a flow does not run it on
        // every event already stored.
        if stores.offsets.load("flows").await?.total() == 0 {
            let head = stores.log.committed().borrow().clone();
            stores.offsets.commit("flows", &head).await?;
        }
        let consumer: Arc<dyn LogConsumer> = Arc::new(SourceTrigger(runner.clone()));
        let (log, offsets) = (stores.log.clone(), stores.offsets.clone());
        supervisor.spawn_singleton("flow-triggers", move |ctx| {
            run_consumer(consumer.clone(), log.clone(), offsets.clone(), ctx)
        });
    }
    for flow in flows.iter() {
        let TriggerConfig::Schedule { payload, .. } = &flow.trigger else {
            continue;
        };
        let (runner, clock, flow, payload) =
            (runner.clone(), clock.clone(), flow.clone(), payload.clone());
        supervisor.spawn_singleton(&format!("flow-schedule-{}", flow.name), move |ctx| {
            let (runner, clock, flow, payload) =
                (runner.clone(), clock.clone(), flow.clone(), payload.clone());
            async move {
                loop {
                    let now = clock.now_ms();
                    let Some(at) = flow.next_firing_ms(now) else {
                        return Ok(());
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis((at - now).max(0) as u64)) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                    // One run per firing, even if two nodes (or a restart) fire it.
                    let id = derived_run_id(&flow.name, &format!("schedule:{at}"));
                    runner.start(&flow.name, payload.clone(), Some(id)).await?;
                }
            }
        });
    }
    Ok(Some(runner))
}
