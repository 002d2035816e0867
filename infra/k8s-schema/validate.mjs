// Checks Kubernetes manifests (a JSON list on stdin) against the schemas of their kinds:
// core v1 Services, batch v1 Jobs and Gateway API v1 HTTPRoutes. One line per manifest; exit 1
// if any fails.
import { Service } from "kubernetes-models/v1/Service";
import { Job } from "kubernetes-models/batch/v1/Job";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import fs from "fs";

const kinds = {
  "v1/Service": Service,
  "batch/v1/Job": Job,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};
let bad = 0;
for (const doc of JSON.parse(fs.readFileSync(0, "utf8"))) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const meta = doc.metadata || {};
  const name = `${doc.kind} ${meta.name || meta.generateName}`;
  const Kind = kinds[key];
  try {
    if (!Kind) throw new Error(`no schema here for ${key}`);
    new Kind(doc).validate();
    console.log(`valid ${name}`);
  } catch (e) {
    bad++;
    console.log(`INVALID ${name}: ${e.message}`);
  }
}
process.exit(bad ? 1 : 0);
