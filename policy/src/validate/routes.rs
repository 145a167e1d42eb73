//! Checks of the `[[routes]]` section: a route's model and its `provider:model` targets.

use toml::Spanned;

use std::collections::HashSet;

use crate::model::{Route, Target};
use crate::raw::RawRoute;
use crate::secret_like::{self, shown};
use crate::validate::{Checker, ProviderIndex};

// === impl Checker ===

impl Checker<'_> {
    pub(super) fn route(
        &mut self,
        spanned: &Spanned<RawRoute>,
        path: &str,
        providers: &ProviderIndex<'_>,
    ) -> Option<Route> {
        let line = self.line(spanned);
        let r = spanned.get_ref();
        let model = self
            .required(&r.model, line, &format!("{path}.model"))
            .and_then(|m| self.model(m, &format!("{path}.model")));
        let targets_path = format!("{path}.targets");
        let list = self.required(&r.targets, line, &targets_path)?;
        if list.get_ref().is_empty() {
            let line = self.line(list);
            self.push(
                line,
                targets_path.as_str(),
                "a route needs at least one target",
            );
            return None;
        }
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for (i, t) in list.get_ref().iter().enumerate() {
            let tpath = format!("{targets_path}[{i}]");
            if let Some(target) = self.target(t, &tpath, providers) {
                if seen.insert(t.get_ref().as_str()) {
                    targets.push(target);
                } else {
                    let line = self.line(t);
                    self.push(line, tpath, "the same target is listed twice in this route");
                }
            }
        }
        let ok = targets.len() == list.get_ref().len();
        Some(Route {
            model: model?,
            targets,
        })
        .filter(|_| ok)
    }

    fn target(
        &mut self,
        t: &Spanned<String>,
        path: &str,
        providers: &ProviderIndex<'_>,
    ) -> Option<Target> {
        let line = self.line(t);
        // Already reported by the secret scan; its parts must not be echoed either.
        if secret_like::detect(t.get_ref()).is_some() {
            return None;
        }
        let Some((provider, model)) = t.get_ref().split_once(':') else {
            self.push(
                line,
                path,
                "a target is \"provider:model\", e.g. \"local:llama3.1\"",
            );
            return None;
        };
        if provider.is_empty() || model.is_empty() {
            self.push(
                line,
                path,
                "a target is \"provider:model\" with both parts present",
            );
            return None;
        }
        if !providers.valid.contains_key(provider) {
            if !providers.declared.contains(provider) {
                self.push(
                    line,
                    path,
                    format!("no provider named {} in [[providers]]", shown(provider)),
                );
            }
            return None;
        }
        let spanned_model = Spanned::new(t.span(), model.to_owned());
        let model = self.model(&spanned_model, path)?;
        if let Some(models) = providers.models.get(provider)
            && !models.contains(model.as_str())
        {
            self.push(
                line,
                path,
                format!(
                    "provider {} does not list model {} in its models",
                    shown(provider),
                    shown(&model)
                ),
            );
            return None;
        }
        Some(Target {
            provider: provider.into(),
            model: model.into(),
        })
    }
}
