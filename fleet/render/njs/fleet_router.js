// Routing by model name for the ollama-fleet gateway (nginx njs module; loaded by the rendered nginx.conf).
//
// nginx.conf supplies the data, rendered from the stack's config; this file holds only the rules:
//   $fleet_model_routes      JSON object: served model (Ollama's shortest spelling) -> [[group, weight], ...]
//   $fleet_groups            JSON list of the node groups, for the merged model lists
//   $fleet_group             set here to the group that serves the request (the access log names it)
//   $fleet_upstream_uri      set here to the Ollama route the named location below proxies to
//   @fleet_group_<group>     named location proxying to the group's upstream (the body-routed requests)
//   /groups/<group>/<route>  the group's own routes (GET /v1/models/{model} and the merged lists go there)
// It is plain ES5 plus async/await, so Debian 12's njs 0.7 and the nginx image's njs run it alike.

var DEFAULT_HOST = 'registry.ollama.ai';
var DEFAULT_NAMESPACE = 'library';
var DEFAULT_TAG = 'latest';
var LOCAL_SUFFIX = ':local';

// Ollama's shortest spelling of a model name (the same rule as fleet/model_names.py short_name).
function shortName(name) {
    name = name.trim();
    if (name.toLowerCase().endsWith(LOCAL_SUFFIX)) {
        name = name.slice(0, name.length - LOCAL_SUFFIX.length);
    }
    if (!name) {
        return '';
    }
    var tag = '';
    var colon = name.lastIndexOf(':');
    if (colon > name.lastIndexOf('/')) {
        tag = name.slice(colon + 1);
        name = name.slice(0, colon);
    }
    var cut = name.lastIndexOf('/');
    var model = name.slice(cut + 1);
    var namespace = DEFAULT_NAMESPACE;
    var host = DEFAULT_HOST;
    if (cut >= 0) {
        var rest = name.slice(0, cut);
        cut = rest.lastIndexOf('/');
        namespace = rest.slice(cut + 1);
        if (cut >= 0) {
            host = rest.slice(0, cut);
            var scheme = host.indexOf('://');
            if (scheme >= 0) {
                host = host.slice(scheme + 3);
            }
        }
    }
    tag = tag || DEFAULT_TAG;
    if (host.toLowerCase() !== DEFAULT_HOST) {
        return host + '/' + namespace + '/' + model + ':' + tag;
    }
    if (namespace.toLowerCase() !== DEFAULT_NAMESPACE) {
        return namespace + '/' + model + ':' + tag;
    }
    return model + ':' + tag;
}

function isOpenAI(r) {
    return r.uri.indexOf('/v1/') === 0;
}

// Errors in the shape each API's clients read: OpenAI's object on /v1/, Ollama's string elsewhere.
function fail(r, status, message, type, extra) {
    var body;
    if (isOpenAI(r)) {
        body = {error: {message: message, type: type, param: 'model', code: status === 404 ? 'model_not_found' : null}};
    } else {
        body = {error: message};
    }
    if (extra) {
        Object.keys(extra).forEach(function (key) { body[key] = extra[key]; });
    }
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify(body) + '\n');
}

// One of the groups serving a model, at random in proportion to the connections each admits (a model
// served by one group, the usual case, always goes there).
function pickGroup(choices) {
    var total = 0;
    choices.forEach(function (choice) { total += choice[1]; });
    var ticket = Math.random() * total;
    for (var i = 0; i < choices.length; i++) {
        ticket -= choices[i][1];
        if (ticket < 0) {
            return choices[i][0];
        }
    }
    return choices[choices.length - 1][0];
}

// Sends the request to the group serving `requested` — `target(group)` names the location — or answers 404
// with the list.
function toGroup(r, requested, target) {
    var routes = JSON.parse(r.variables.fleet_model_routes);
    var name = shortName(requested);
    var group = Object.prototype.hasOwnProperty.call(routes, name) ? pickGroup(routes[name]) : '';
    if (!group) {
        var served = Object.keys(routes).sort();
        fail(r, 404, "model '" + requested + "' is not served by this gateway; served models: " + served.join(', '),
             'invalid_request_error', {models: served});
        return;
    }
    r.variables.fleet_group = group;
    r.internalRedirect(target(group));
}

function namedLocation(group) {
    return '@fleet_group_' + group;
}

// What a request may not set, because the stack sets it for every client of a node: the runner options
// (Ollama v0.24.0 api/types.go `Runner`: server/sched.go needsReload loads the model anew whenever one
// differs from the loaded runner's, so one client's num_ctx would reload the model under everybody's
// requests and could push layers off the GPU) and keep_alive (a client's 0 would unload a resident model, -1
// pin an on-demand one). The capacity model and the policy pack judge the stack's values only.
var RUNNER_OPTIONS = ['num_ctx', 'num_batch', 'num_gpu', 'main_gpu', 'use_mmap', 'num_thread'];

function has(object, key) {
    return object !== null && typeof object === 'object' && Object.prototype.hasOwnProperty.call(object, key);
}

function stackSettingsIn(body) {
    var found = [];
    RUNNER_OPTIONS.forEach(function (key) {
        if (has(body.options, key)) {
            found.push('options.' + key);
        }
    });
    if (has(body, 'keep_alive')) {
        found.push('keep_alive');
    }
    return found;
}

// Answers 400 when the body sets what the stack decides; true when it did.
function refusedSettings(r, body) {
    var found = stackSettingsIn(body);
    if (!found.length) {
        return false;
    }
    var message = found.join(', ') + ' cannot be set by a request: the stack decides them for every client of ' +
        'a node (each change would reload the model); leave ' + (found.length > 1 ? 'them' : 'it') + ' out';
    if (isOpenAI(r)) {
        r.headersOut['Content-Type'] = 'application/json';
        r.return(400, JSON.stringify({error: {message: message, type: 'invalid_request_error', param: found[0],
                                              code: null}}) + '\n');
    } else {
        fail(r, 400, message, 'invalid_request_error');
    }
    return true;
}

function parsedObject(text) {
    try {
        var body = JSON.parse(text);
        return body !== null && typeof body === 'object' && !Array.isArray(body) ? body : null;
    } catch (e) {
        return null;
    }
}

// Inference and /api/show: the group is chosen by the JSON body's `model` (/api/show also reads the older
// `name`, as Ollama does). nginx has read the whole body into memory before this runs; the body limit
// (413) was applied while reading it.
function byBody(r) {
    var text = r.requestText || '';
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        fail(r, 400, text.trim() ? 'request body is not valid JSON' : 'missing request body: send a JSON object naming the model',
             'invalid_request_error');
        return;
    }
    var model = body !== null && typeof body === 'object' && !Array.isArray(body)
        ? (body.model || (r.uri === '/api/show' ? body.name : '')) : '';
    if (typeof model !== 'string' || !model.trim()) {
        fail(r, 400, 'model is required: name it in the "model" field of the JSON body', 'invalid_request_error');
        return;
    }
    if (refusedSettings(r, body)) {
        return;
    }
    r.variables.fleet_upstream_uri = r.uri;
    toGroup(r, model, namedLocation);
}

// A group's own inference routes (/groups/<group>/<route>): the operator chose the group, so the model is not
// looked up, but what the stack decides is refused as on the bare routes. A body that is not a JSON object
// goes on to Ollama, which answers it as it always does.
function byGroupRoute(r) {
    var rest = r.uri.slice('/groups/'.length);
    var slash = rest.indexOf('/');
    var group = rest.slice(0, slash);
    var body = parsedObject(r.requestText || '');
    if (body !== null && refusedSettings(r, body)) {
        return;
    }
    r.variables.fleet_group = group;
    r.variables.fleet_upstream_uri = rest.slice(slash);
    r.internalRedirect(namedLocation(group));
}

// GET /v1/models/{model}: the group is chosen by the model in the path, and the request continues on the
// group's own route, which passes the normalised path on.
function byPath(r) {
    var prefix = '/v1/models/';
    toGroup(r, r.uri.slice(prefix.length), function (group) { return '/groups/' + group + r.uri; });
}

// Each kind of list: where its items are and which field names a model.
var LISTS = {
    '/api/tags': {items: 'models', key: 'model'},
    '/api/ps': {items: 'models', key: 'model'},
    '/v1/models': {items: 'data', key: 'id'}
};

// Whether `group` serves `name` (a node also holds what it was made from, e.g. the library tag it pulled
// before naming the served model, and what an earlier config served: those are not listed).
function serves(routes, name, group) {
    var key = shortName(String(name));
    return Object.prototype.hasOwnProperty.call(routes, key) &&
        routes[key].some(function (choice) { return choice[0] === group; });
}

// /api/tags, /api/ps, /v1/models: every group's answer (one node each, through /groups/<group>/...), merged,
// with only the models the gateway routes to that group.
// A group none of whose nodes answers is left out and named in X-Fleet-Unavailable-Groups; when no group
// answers, the client gets 503 like any request no node could take.
async function mergedList(r) {
    var list = LISTS[r.uri];
    var groups = JSON.parse(r.variables.fleet_groups);
    var routes = JSON.parse(r.variables.fleet_model_routes);
    var replies = await Promise.all(groups.map(function (group) {
        return r.subrequest('/groups/' + group + r.uri, {method: 'GET'}).then(
            function (reply) { return reply; },
            function () { return {status: 502, responseText: ''}; }
        );
    }));
    var merged = null;
    var seen = {};
    var missing = [];
    replies.forEach(function (reply, index) {
        var answer = null;
        if (reply.status === 200) {
            try {
                answer = JSON.parse(reply.responseText);
            } catch (e) {
                answer = null;
            }
        }
        if (answer === null || typeof answer !== 'object' || !Array.isArray(answer[list.items])) {
            missing.push(groups[index]);
            return;
        }
        var items = answer[list.items];
        if (merged === null) {
            merged = answer;  // the first answer's other fields (`object` of /v1/models) stay
            merged[list.items] = [];
        }
        items.forEach(function (item) {
            var name = item && (item[list.key] || item.name);
            if (name && !seen[name] && serves(routes, name, groups[index])) {
                seen[name] = true;
                merged[list.items].push(item);
            }
        });
    });
    // The access log names every group asked (the subrequests each set it to their own).
    r.variables.fleet_group = groups.join(',');
    if (missing.length) {
        r.headersOut['X-Fleet-Unavailable-Groups'] = missing.join(',');
    }
    if (merged === null) {
        r.headersOut['Content-Type'] = 'application/json';
        r.return(503, JSON.stringify({error: 'no node of any group answered, retry after ' +
                                             r.variables.fleet_retry_after_s + ' seconds'}) + '\n');
        return;
    }
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify(merged));
}

export default {byBody: byBody, byGroupRoute: byGroupRoute, byPath: byPath, mergedList: mergedList, shortName: shortName};
