//! `notify`: tells people through a channel (Slack, signed webhook, e-mail), the same channel
//! kinds as `[alerts]` uses.

use async_trait::async_trait;
use raccordo_core::Completion;
use raccordo_notify::{Channel, ChannelConfig, Notification};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    BuildContext, BuildError, Step, StepEnv, StepError, StepOutput, render_field, template,
};
use crate::template::Template;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    channel: ChannelConfig,
    /// The message (a template).
    message: String,
    /// What it is about, shown as its title (a template; the flow's name by default).
    #[serde(default)]
    subject: Option<String>,
}

pub struct NotifyStep {
    channel: ChannelConfig,
    message: Template,
    subject: Option<Template>,
}

impl NotifyStep {
    pub fn build(s: NotifySettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        s.channel
            .validate(cx.outbound)
            .map_err(|e| ("channel".to_string(), e))?;
        let scope = cx.scope(false);
        Ok(Self {
            message: template("message", &s.message, &scope)?,
            subject: s
                .subject
                .as_deref()
                .map(|t| template("subject", t, &scope))
                .transpose()?,
            channel: s.channel,
        })
    }
}

#[async_trait]
impl Step for NotifyStep {
    fn kind(&self) -> &'static str {
        "notify"
    }
    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        Ok(json!({
            "message": render_field("message", &self.message, context)?,
            "subject": self.subject.as_ref().map(|t| render_field("subject", t, context)).transpose()?,
        }))
    }
    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let message = input["message"]
            .as_str()
            .ok_or_else(|| StepError::at("message", "must be text"))?;
        let channel: Box<dyn Channel> = self
            .channel
            .build(&env.services.channels)
            .map_err(StepError::permanent)?;
        let notification = Notification {
            // The same on every attempt: a webhook receiver deduplicates on it.
            id: format!("flw_{}_{}", env.run_id, env.step),
            channel: 0,
            kind: "flow".into(),
            subject: input["subject"].as_str().unwrap_or(env.flow).to_string(),
            message: message.to_string(),
            at_ms: env.services.clock.now_ms(),
        };
        match channel.send(&notification).await {
            Completion::Done => Ok(StepOutput::of(json!({ "sent": channel.kind() }))),
            Completion::Retryable {
                error,
                retry_after_ms,
            } => Err(StepError::Retryable {
                message: error,
                retry_after_ms,
            }),
            Completion::Permanent { error } => Err(StepError::permanent(error)),
        }
    }
}
