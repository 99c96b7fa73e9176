{{- /*
Reserved for the janitor (later work; values section `janitor`, off until then):
  janitor/janitor-cronjob.yaml          CronJob running `celery-stack-janitor sweep`
                                        (concurrencyPolicy Forbid, activeDeadlineSeconds,
                                        ttlSecondsAfterFinished), its own ServiceAccount
  janitor/janitor-operator-deployment.yaml  the kopf operator
  janitor/janitor-role.yaml, janitor-rolebinding.yaml  least RBAC (pods get/list/watch,
                                        janitorpolicies, cronjobs in this namespace)
  crds/janitorpolicies.yaml (chart crds/ dir) the JanitorPolicy CRD
Reuse the helpers: celery-stack.env, celery-stack.envFrom, celery-stack.securityContext,
celery-stack.podSecurityContext, celery-stack.tmpVolume, celery-stack.waitForMigrations.
The NetworkPolicy default-deny already covers janitor pods; add its API-server egress like
networkpolicy-beat.yaml.
*/ -}}
