//! The apps' lanes and watchers: starting them, recovering the spool's jobs into them, and a
//! reload's changes.

use super::*;

impl Daemon {
    pub(super) fn start_lane(&mut self, app: &AppConfig) {
        self.pipeline.start_lane(&self.config, app);
        self.show_attention(&app.name);
    }

    /// An app that needed attention when the daemon stopped still does: the metric, the
    /// systemd status line and the board say so again.
    fn show_attention(&self, app: &str) {
        let store = crate::verify::store::Store::new(&self.config.state_dir);
        let Some(attention) = store.attention(app) else {
            return;
        };
        self.pipeline.after.metrics.set_needs_attention(app, true);
        self.live.wait(
            app,
            crate::live::WaitKind::Attention,
            app,
            &attention.reason,
            None,
        );
        if let Ok(mut active) = self.board.active.lock() {
            active.insert(app.to_string(), crate::service::NEEDS_ATTENTION.to_string());
        }
        self.board.publish();
    }

    pub(super) fn tree_config(&self, app: &AppConfig, root: &std::path::Path) -> TreeConfig {
        TreeConfig {
            app: app.name.clone(),
            root: root.to_path_buf(),
            ignore: app.ignore.clone(),
            include: app.include.clone(),
            // The daemon's own files never trigger a deploy nor get packed.
            always_ignore: vec![self.config.state_dir.clone()],
            quiet: app.debounce,
            max_wait: app.max_wait,
            poll: app.poll,
            // A service waits for a lost source directory for ever, visibly (`status`).
            give_up: None,
        }
    }

    /// Starts watching an app's source directory, and its redeploy loop.
    pub(super) fn start_tree(
        &mut self,
        app: &AppConfig,
        root: &std::path::Path,
    ) -> Result<(), String> {
        let cfg = self.tree_config(app, root);
        let watcher = TreeWatcher::start(cfg.clone()).map_err(|e| e.to_string())?;
        watcher.publish_gaps(self.live.clone());
        let Some(lane) = self.pipeline.lanes.sender(&app.name) else {
            return Err(format!("app {}: no lane", app.name));
        };
        // The loop stops with the daemon, or alone when its app is removed or changed.
        let (trigger, stop) = shutdown::channel();
        let redeploy_cfg = RedeployConfig {
            app: app.name.clone(),
            label: app.ref_label().to_string(),
            prefix: app.name.clone(),
            limits: Limits {
                max_uncompressed: self.config.max_archive_bytes,
            },
            deploy_on_start: app.deploy_on_start,
            state_dir: self.config.state_dir.clone(),
        };
        let spool = self.pipeline.spool.clone();
        let name = app.name.clone();
        tracing::info!(
            app = %app.name,
            source_dir = %root.display(),
            watches = watcher.watch_count(),
            "watching source directory"
        );
        let publisher = self.publisher.clone();
        let (poll, stopped) = (self.fleet_poll(), stop.clone());
        let deploy = move |job: Job| -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<crate::queue::spool::JobState>> + Send>,
        > {
            // Fleet mode: the packed tree becomes the fleet's; the node holding the lane
            // deploys it, and the loop waits for its end in the store.
            if let Some(publisher) = publisher.clone() {
                return Box::pin(publish::until_finished(
                    publisher,
                    job,
                    poll,
                    stopped.clone(),
                ));
            }
            let lane = lane.clone();
            Box::pin(async move {
                let done = lane.submit_watched(job)?;
                done.await.ok()
            })
        };
        tokio::spawn(async move {
            redeploy::run(redeploy_cfg, watcher, spool, deploy, stop, |event| {
                log_tree_event(&name, event)
            })
            .await;
        });
        self.trees.insert(app.name.clone(), (cfg, trigger));
        Ok(())
    }

    pub(super) fn start_watcher(&mut self, app: &AppConfig) -> Result<(), String> {
        if let Some(root) = &app.source_dir {
            return self.start_tree(app, &root.clone());
        }
        let Some(dir) = &app.drop_dir else {
            return Ok(());
        };
        let cfg = DropFolderConfig {
            app: app.name.clone(),
            dir: dir.clone(),
            settle: app.settle,
        };
        let watcher =
            DropWatcher::start_with_board(cfg.clone(), self.ready_tx.clone(), self.live.clone())
                .map_err(|e| e.to_string())?;
        tracing::info!(app = %app.name, drop_dir = %dir.display(), "watching drop folder");
        self.watchers.insert(app.name.clone(), (cfg, watcher));
        Ok(())
    }

    /// Hands every unfinished job of a configured app to its lane, those already under way on
    /// the platform first (each is driven to its end before any queued job of its app
    /// starts), then the others in the spool's order; and records the outcome of finished jobs
    /// whose outcome was not recorded yet.
    pub(super) async fn recover(&mut self) {
        let spool = self.pipeline.spool.clone();
        let jobs = match tokio::task::spawn_blocking(move || spool.jobs()).await {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(e)) => {
                tracing::error!("cannot list the spool: {e}");
                return;
            }
            Err(e) => {
                tracing::error!("cannot list the spool: {e}");
                return;
            }
        };
        let mut jobs = jobs;
        // Stable: the spool's order holds within each group.
        jobs.sort_by_key(|job| {
            !job.as_ref()
                .is_ok_and(|job| !job.is_done() && crate::queue::lane::under_way(job))
        });
        for job in jobs {
            let job = match job {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!("{e}; left in place");
                    continue;
                }
            };
            if self.pipeline.lanes.knows(&job.id) {
                continue;
            }
            if job.is_done() {
                let keep = self
                    .config
                    .app(&job.app)
                    .map(|a| a.keep_done)
                    .unwrap_or(DEFAULT_KEEP_DONE);
                self.pipeline.record_finished(job, keep).await;
                continue;
            }
            // A watched tree's loop resumes its own jobs before it packs anything, so that the
            // same content is never in flight twice.
            if redeploy::tree_digest_of(&job).is_some()
                && self
                    .config
                    .app(&job.app)
                    .is_some_and(|a| a.source_dir.is_some())
            {
                continue;
            }
            tracing::info!(app = %job.app, job = %job.id, state = %job.state.name(), "recovering job");
            if let Err(job) = self.pipeline.lanes.submit(job) {
                tracing::warn!(
                    app = %job.app,
                    job = %job.id,
                    state = job.state.name(),
                    "job for an app that is not configured; left in the spool until the app is configured again"
                );
            }
        }
    }

    /// Delivers the outcome hooks that a process which stopped left undelivered (see
    /// [`AfterOutcome::deliver_left`]).
    pub(super) async fn deliver_left_hooks(&self) {
        let (after, outcomes, spool) = (
            self.pipeline.after.clone(),
            self.pipeline.outcomes.clone(),
            self.pipeline.spool.clone(),
        );
        let _ = crate::blocking::run(move || {
            after.deliver_left(&outcomes, &spool);
            Ok::<_, std::convert::Infallible>(())
        })
        .await;
    }

    /// Re-reads the configuration. A configuration with errors is refused whole; otherwise
    /// removed apps stop after their job in flight, added apps start, changed apps take their
    /// new settings.
    pub(super) async fn reload(&mut self) {
        tracing::info!(config = %self.config_path.display(), "reloading the configuration");
        let Some(new) = self.load_for_reload() else {
            return;
        };
        let old = self.adopt(new);
        self.remove_apps(&old);
        if self.start_or_restart_apps() {
            self.recover().await;
        }
        tracing::info!(apps = self.config.apps.len(), "configuration reloaded");
    }

    /// The configuration file read again and checked, with the platform client it needs (taken
    /// into the wiring). `None`: refused, already said; the running configuration is kept.
    fn load_for_reload(&mut self) -> Option<Config> {
        let loaded = match Config::load(&self.config_path, &self.env) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("reload refused, the running configuration is kept:\n{e}");
                return None;
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let new = loaded.config;
        if let Err(e) = check_apps(&new, &self.pipeline.spool) {
            tracing::error!("reload refused, the running configuration is kept: {e}");
            return None;
        }
        // The same account and endpoints keep the same client: one budget of requests, and
        // the streams of the deployments in flight.
        let same = match (&self.pipeline.wiring.client, new.scalingo.token.as_ref()) {
            (Some(old), Some(token)) => old.serves(&new.scalingo, token),
            _ => false,
        };
        if same {
            return Some(new);
        }
        match scalingo_client(&new) {
            Ok(client) => {
                if let Some(client) = &client {
                    client.budget().publish_to(self.live.clone());
                }
                self.pipeline.wiring.client = client;
            }
            Err(e) => {
                tracing::error!("reload refused, the running configuration is kept: {e}");
                return None;
            }
        }
        Some(new)
    }

    /// Makes `new` the running configuration (and the one the hooks read); returns the one it
    /// replaces.
    fn adopt(&mut self, new: Config) -> Config {
        for app in &new.apps {
            self.pipeline.after.metrics.register_app(&app.name);
        }
        if new.metrics_listen != self.config.metrics_listen {
            tracing::warn!("metrics_listen changed: it takes effect at the next restart");
        }
        if let Ok(mut shared) = self.pipeline.after.config.write() {
            *shared = new.clone();
        }
        std::mem::replace(&mut self.config, new)
    }

    /// Stops the watchers and retires the lanes of the apps of `old` that are no longer
    /// configured.
    fn remove_apps(&mut self, old: &Config) {
        for app in &old.apps {
            if self.config.app(&app.name).is_none() {
                if let Some((_, watcher)) = self.watchers.remove(&app.name) {
                    watcher.stop();
                }
                if let Some((_, tree)) = self.trees.remove(&app.name) {
                    tree.fire();
                }
                self.pipeline.lanes.retire(&app.name);
                self.live.clear_app(&app.name);
                tracing::info!(app = %app.name, "app removed: it stops after its job in flight");
            }
        }
    }

    /// Gives every configured app its lane's settings, and starts the watchers of added apps
    /// and of apps whose watched directory changed. `true` if an app was added.
    fn start_or_restart_apps(&mut self) -> bool {
        let mut added = false;
        for app in self.config.apps.clone() {
            self.start_lane(&app);
            if self.watches_as_configured(&app) {
                continue;
            }
            let old_drop = self.watchers.remove(&app.name);
            let old_tree = self.trees.remove(&app.name);
            if old_drop.is_none() && old_tree.is_none() {
                added = true;
                tracing::info!(app = %app.name, "app added");
            }
            if let Some((_, watcher)) = old_drop {
                watcher.stop();
            }
            if let Some((_, tree)) = old_tree {
                tree.fire();
            }
            if let Err(e) = self.start_watcher(&app) {
                tracing::error!(app = %app.name, "cannot watch: {e}");
            }
        }
        added
    }

    /// Whether the app's running watcher (or its absence) already matches its configuration.
    fn watches_as_configured(&self, app: &AppConfig) -> bool {
        match (&app.source_dir, &app.drop_dir) {
            (Some(root), _) => {
                let wanted = self.tree_config(app, root);
                self.trees
                    .get(&app.name)
                    .is_some_and(|(cfg, _)| *cfg == wanted)
            }
            (None, Some(dir)) => self
                .watchers
                .get(&app.name)
                .is_some_and(|(cfg, _)| &cfg.dir == dir && cfg.settle == app.settle),
            (None, None) => true,
        }
    }
}

/// One log line per step of a watched directory's redeploy loop.
pub(super) fn log_tree_event(app: &str, event: &TreeEvent<'_>) {
    match event {
        TreeEvent::Changed(burst) => tracing::info!(
            app,
            changed = burst.changed_paths,
            overflow = burst.overflow,
            "source directory changed"
        ),
        TreeEvent::Unchanged => {
            tracing::info!(
                app,
                "unchanged: the tree is the one last deployed; nothing to do"
            )
        }
        TreeEvent::Packing => tracing::debug!(app, "packing"),
        TreeEvent::Packed { job, elapsed } => tracing::info!(
            app,
            job = %job.id,
            git_ref = %job.git_ref,
            elapsed_ms = elapsed.as_millis() as u64,
            "packed"
        ),
        TreeEvent::PackFailed { error } => tracing::warn!(
            app,
            "cannot pack the source directory: {error}; waiting for the next change"
        ),
        TreeEvent::Finished { .. } => {}
    }
}
