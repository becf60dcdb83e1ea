# The tutorial's API gateway (shared/reference/tutorial.md, "Creating the API Gateway"), kept as
# written except for three things the benchmark needs, all read from the environment:
#   - the upstream origin (the tutorial hard-codes http://microservice1:5001, a compose name),
#   - HOST and PORT (the tutorial listens on 0.0.0.0:5000; the benchmark uses loopback only),
#   - nothing else: SECRET_KEY already comes from the environment in the tutorial.
# It still runs the tutorial's way: app.run(..., debug=True), i.e. the Werkzeug development server,
# threaded, with the debugger and the stat reloader (a parent process that re-runs this script in a
# child; bench/harness.py starts it in its own process group and stops the whole group).
from flask import Flask, request, jsonify, make_response
import jwt
import requests
from datetime import datetime, timedelta
import os

app = Flask(__name__)
app.config['SECRET_KEY'] = os.environ.get('SECRET_KEY', 'your_secret_key')

SERVICE1 = os.environ.get('UPSTREAM_SERVICE1', 'http://microservice1:5001')
SERVICE2 = os.environ.get('UPSTREAM_SERVICE2', 'http://microservice2:5002')

# In-memory user store for demonstration purposes
users = {
    'user1': 'password1',
    'user2': 'password2'
}

@app.route('/login', methods=['POST'])
def login():
    auth_data = request.json
    username = auth_data.get('username')
    password = auth_data.get('password')

    if not username or not password or users.get(username) != password:
        return jsonify({'message': 'Invalid credentials'}), 401

    token = jwt.encode({
        'sub': username,
        'iat': datetime.utcnow(),
        'exp': datetime.utcnow() + timedelta(minutes=30)
    }, app.config['SECRET_KEY'], algorithm='HS256')

    response = make_response(jsonify({'message': 'Logged in successfully'}))
    response.set_cookie('token', token, httponly=True, samesite='Strict')
    return response

@app.route('/logout', methods=['POST'])
def logout():
    response = make_response(jsonify({'message': 'Logged out successfully'}))
    response.set_cookie('token', '', expires=0)
    return response

def verify_token():
    token = request.cookies.get('token')
    if not token:
        return None
    try:
        payload = jwt.decode(token, app.config['SECRET_KEY'], algorithms=['HS256'])
        return payload
    except jwt.ExpiredSignatureError:
        return 'expired'
    except jwt.InvalidTokenError:
        return None

@app.route('/service1', methods=['GET', 'POST'])
def service1():
    payload = verify_token()
    if payload == 'expired':
        return jsonify({'message': 'Token expired'}), 401
    if payload is None:
        return jsonify({'message': 'Invalid token'}), 401

    # Forward the request to microservice1
    resp = requests.request(
        method=request.method,
        url=SERVICE1 + request.path,
        headers={key: value for (key, value) in request.headers if key != 'Host'},
        data=request.get_data(),
        cookies=request.cookies,
        allow_redirects=False)
    return (resp.content, resp.status_code, resp.headers.items())

@app.route('/service2', methods=['GET', 'POST'])
def service2():
    payload = verify_token()
    if payload == 'expired':
        return jsonify({'message': 'Token expired'}), 401
    if payload is None:
        return jsonify({'message': 'Invalid token'}), 401

    # Forward the request to microservice2
    resp = requests.request(
        method=request.method,
        url=SERVICE2 + request.path,
        headers={key: value for (key, value) in request.headers if key != 'Host'},
        data=request.get_data(),
        cookies=request.cookies,
        allow_redirects=False)
    return (resp.content, resp.status_code, resp.headers.items())

if __name__ == '__main__':
    app.run(host=os.environ.get('HOST', '0.0.0.0'), port=int(os.environ.get('PORT', '5000')), debug=True)
