#!/usr/bin/env python3
"""The test stack as CloudFormation would create it from template.yaml.

Expands the SAM template with aws-sam-translator (what `sam deploy` runs),
resolves intrinsic functions against the lane's names and parameters, and
prints, per function: binary, name, ARN, timeout, memory, environment
(Globals merged with the function's own), the statements of its execution
role, EventInvokeConfig, HTTP routes and schedules.

usage: stack.py TEMPLATE NAMES_JSON   (NAMES_JSON: {"stack", "region",
"account", "table", "bucket", "queueUrl", "parameters": {...}})
"""
import json
import sys

from cfnlint.decode import decode
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    # The execution roles reference only AWS managed policies for logging,
    # which no function call needs; their ARNs are kept as names.
    def load(self):
        return {"AWSLambdaBasicExecutionRole":
                "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}


class Resolver:
    def __init__(self, template, names):
        self.t = template
        self.n = names
        self.params = {}
        for name, spec in template.get("Parameters", {}).items():
            value = names["parameters"].get(name, spec.get("Default"))
            if value is None:
                raise SystemExit(f"parameter {name} has no value and no default")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            self.params[name] = value
        self.conditions = {}

    def physical(self, logical):
        res = self.t["Resources"][logical]
        kind = res["Type"]
        props = res.get("Properties", {})
        n = self.n
        if kind == "AWS::DynamoDB::Table":
            return n["table"]
        if kind == "AWS::S3::Bucket":
            return n["bucket"]
        if kind == "AWS::SQS::Queue":
            return n["queueUrl"]
        if kind == "AWS::Lambda::Function":
            if "FunctionName" in props:
                return self.value(props["FunctionName"])
            return f'{n["stack"]}-{logical}'
        if kind == "AWS::IAM::Role":
            return f'{n["stack"]}-{logical}'
        if kind == "AWS::ApiGatewayV2::Api":
            return "lane"
        return f'{n["stack"]}-{logical}'

    def pseudo(self, name):
        n = self.n
        return {"AWS::StackName": n["stack"], "AWS::Region": n["region"],
                "AWS::AccountId": n["account"], "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com"}[name]

    def ref(self, name):
        if name in self.params:
            return self.params[name]
        if name.startswith("AWS::"):
            return self.pseudo(name)
        return self.physical(name)

    def get_att(self, logical, attr):
        kind = self.t["Resources"][logical]["Type"]
        n = self.n
        if kind == "AWS::S3::Bucket" and attr == "Arn":
            return f'arn:aws:s3:::{n["bucket"]}'
        if kind == "AWS::SQS::Queue":
            qname = n["queueUrl"].rstrip("/").rsplit("/", 1)[1]
            if attr == "Arn":
                return f'arn:aws:sqs:{n["region"]}:{n["account"]}:{qname}'
            if attr == "QueueName":
                return qname
        if kind == "AWS::DynamoDB::Table" and attr == "Arn":
            return f'arn:aws:dynamodb:{n["region"]}:{n["account"]}:table/{n["table"]}'
        if kind == "AWS::Lambda::Function" and attr == "Arn":
            return f'arn:aws:lambda:{n["region"]}:{n["account"]}:function:{self.physical(logical)}'
        if kind == "AWS::IAM::Role" and attr == "Arn":
            return f'arn:aws:iam::{n["account"]}:role/{self.physical(logical)}'
        raise SystemExit(f"unsupported GetAtt {logical}.{attr}")

    def sub(self, text, extra):
        out, i = "", 0
        while i < len(text):
            j = text.find("${", i)
            if j < 0:
                out += text[i:]
                break
            out += text[i:j]
            k = text.index("}", j)
            name = text[j + 2:k]
            if name.startswith("!"):
                out += "${" + name[1:] + "}"
            elif name in extra:
                out += str(extra[name])
            elif "." in name and not name.startswith("AWS::"):
                logical, attr = name.split(".", 1)
                out += str(self.get_att(logical, attr))
            else:
                out += str(self.ref(name))
            i = k + 1
        return out

    def condition(self, name):
        if name not in self.conditions:
            self.conditions[name] = bool(self.value(self.t["Conditions"][name]))
        return self.conditions[name]

    NO_VALUE = object()

    def value(self, v):
        if isinstance(v, list):
            out = [self.value(x) for x in v]
            return [x for x in out if x is not Resolver.NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return Resolver.NO_VALUE if a == "AWS::NoValue" else self.ref(a)
            if k == "Fn::GetAtt":
                logical, attr = a if isinstance(a, list) else a.split(".", 1)
                return self.get_att(logical, attr)
            if k == "Fn::Sub":
                if isinstance(a, list):
                    extra = {kk: self.value(vv) for kk, vv in a[1].items()}
                    return self.sub(a[0], extra)
                return self.sub(a, {})
            if k == "Fn::If":
                return self.value(a[1] if self.condition(a[0]) else a[2])
            if k == "Fn::Equals":
                x, y = self.value(a[0]), self.value(a[1])
                return str(x) == str(y)
            if k == "Fn::Not":
                return not self.value(a[0])
            if k == "Fn::And":
                return all(self.value(x) for x in a)
            if k == "Fn::Or":
                return any(self.value(x) for x in a)
            if k == "Condition":
                return self.condition(a)
            if k == "Fn::Select":
                return self.value(a[1])[int(self.value(a[0]))]
            if k == "Fn::Split":
                return str(self.value(a[1])).split(a[0])
            if k == "Fn::Join":
                return a[0].join(str(x) for x in self.value(a[1]))
        out = {}
        for k, x in v.items():
            r = self.value(x)
            if r is not Resolver.NO_VALUE:
                out[k] = r
        return out


def routes(sam_function):
    out, schedules = [], []
    for event in sam_function.get("Properties", {}).get("Events", {}).values():
        props = event.get("Properties", {})
        if event["Type"] == "HttpApi":
            auth = props.get("Auth", {}).get("Authorizer") != "NONE"
            out.append({"method": props["Method"], "path": props["Path"], "auth": auth})
        elif event["Type"] in ("ScheduleV2", "Schedule"):
            schedules.append({"expression": props["ScheduleExpression"],
                              "state": props.get("State", "ENABLED"),
                              "input": props.get("Input")})
    return out, schedules


def main():
    import os
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template_path, names_path = sys.argv[1], sys.argv[2]
    names = json.load(open(names_path))
    sam, matches = decode(template_path)
    if sam is None:
        raise SystemExit(f"cannot read {template_path}: {matches}")
    sam = json.loads(json.dumps(sam))
    packaged = json.loads(json.dumps(sam))
    # `sam package` replaces each local CodeUri with the uploaded artifact.
    for logical, res in packaged["Resources"].items():
        if res["Type"] == "AWS::Serverless::Function":
            res["Properties"]["CodeUri"] = f"s3://lane-artifacts/{logical}.zip"
    cfn = transform(packaged, names["parameters"], NoManagedPolicies())
    r = Resolver(cfn, names)
    sam_r = Resolver(sam, names)
    functions = {}
    for logical, res in cfn["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        props = r.value(res["Properties"])
        role_logical = res["Properties"]["Role"]["Fn::GetAtt"][0]
        role = r.value(cfn["Resources"][role_logical]["Properties"])
        statements = []
        for policy in role.get("Policies", []):
            stmts = policy["PolicyDocument"]["Statement"]
            statements.extend(stmts if isinstance(stmts, list) else [stmts])
        invoke = {}
        for other in cfn["Resources"].values():
            if other["Type"] == "AWS::Lambda::EventInvokeConfig" and \
                    other["Properties"]["FunctionName"].get("Ref") == logical:
                invoke = r.value(other["Properties"])
        sam_fn = sam["Resources"][logical]
        http_routes, schedules = routes(sam_r.value(sam_fn))
        functions[logical] = {
            "binary": sam_fn["Metadata"]["BuildProperties"]["Binary"],
            "name": r.physical(logical),
            "arn": r.get_att(logical, "Arn"),
            "timeoutSeconds": props.get("Timeout", 3),
            "memoryMb": props.get("MemorySize", 128),
            "environment": props.get("Environment", {}).get("Variables", {}),
            "statements": statements,
            "managedPolicyArns": role.get("ManagedPolicyArns", []),
            "eventInvokeConfig": invoke,
            "deadLetterTarget": props.get("DeadLetterConfig", {}).get("TargetArn"),
            "routes": http_routes,
            "schedules": schedules,
        }
    bucket_policies = [r.value(res["Properties"]["PolicyDocument"])
                       for res in cfn["Resources"].values()
                       if res["Type"] == "AWS::S3::BucketPolicy"]
    print(json.dumps({"functions": functions, "parameters": r.params,
                      "bucketPolicy": bucket_policies[0] if bucket_policies else None},
                     indent=1))


main()
